"""The ``sse-adapter`` command as a user runs it: a real process."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sse_adapter import __version__
from sse_adapter.settings import HeartbeatMode, Settings, SettingsError
from tests.adapter_server import STARTUP, free_port, free_port_pair

ROOT = Path(__file__).parent.parent
ENV = {key: value for key, value in os.environ.items() if not key.startswith("SSE_ADAPTER_")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sse_adapter", *args],
        capture_output=True,
        text=True,
        timeout=STARTUP,
        env={**ENV, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ((), {}, "Missing option '--upstream'"),
        (("--upstream", "localhost:8080"), {}, "--upstream must be an http:// or https:// URL"),
        (("--upstream", "http://x", "--heartbeat-mode", "loud"), {}, "'loud' is not one of"),
        (
            ("--upstream", "http://x", "--heartbeat-interval", "0"),
            {},
            "--heartbeat-interval must be more than 0",
        ),
        (
            ("--upstream", "http://x"),
            {"SSE_ADAPTER_HEARTBEAT_INTERVAL": "soon"},
            "SSE_ADAPTER_HEARTBEAT_INTERVAL",
        ),
        (("--upstream", "http://x", "--port", "70000"), {}, "--port must be between 1 and 65535"),
    ],
    ids=["missing-upstream", "bad-url", "bad-mode", "zero-interval", "bad-env", "bad-port"],
)
def test_a_bad_value_is_one_line_and_exit_code_2(
    args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    result = run("serve", *args, env=env)
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@dataclass
class Served:
    reply: httpx.Response  # the first /healthz answer
    output: str = ""  # what the process printed, once it has stopped


@contextlib.contextmanager
def serving(port: int, *args: str, env: dict[str, str]) -> Iterator[Served]:
    """``sse-adapter serve`` as a process, once its /healthz answers on ``port``; its output
    is there once the ``with`` block has ended the process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sse_adapter", "serve", *args],
        env={**ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = None
    try:
        deadline = time.monotonic() + STARTUP
        with httpx.Client() as client:
            while True:
                try:
                    served = Served(client.get(f"http://127.0.0.1:{port}/healthz"))
                    break
                except httpx.TransportError:
                    assert process.poll() is None, process.stdout.read() if process.stdout else ""
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        yield served
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
        if served is not None:
            served.output = output


def test_serve_reads_env_and_the_flag_wins() -> None:
    port = free_port()
    env = {
        "SSE_ADAPTER_UPSTREAM": "http://127.0.0.1:9",
        "SSE_ADAPTER_PORT": "1",
        "SSE_ADAPTER_HOST": "127.0.0.1",
    }
    with serving(port, "--port", str(port), env=env) as served:
        assert served.reply.json() == {"status": "ok"}
        unreachable = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m"})
        assert unreachable.status_code == 502
        assert "cannot connect to the model server" in unreachable.json()["error"]["message"]
    assert (
        "sse-adapter relays to http://127.0.0.1:9," in served.output
    )  # the env's upstream, named in the log


def test_settings_defaults_match_the_documented_interface() -> None:
    settings = Settings(upstream="http://127.0.0.1:8080")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.heartbeat_interval == 10.0
    assert settings.heartbeat_mode is HeartbeatMode.CHUNK


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://tgi:80", "http://tgi:80"),
        ("http://tgi:80/", "http://tgi:80"),
        ("http://tgi:80/v1", "http://tgi:80"),
        ("https://host/prefix/v1/", "https://host/prefix"),
    ],
)
def test_the_upstream_base_url_is_normalised(given: str, base: str) -> None:
    assert Settings(upstream=given).upstream == base


def test_settings_refuse_an_unknown_mode() -> None:
    with pytest.raises(SettingsError, match="--heartbeat-mode must be one of chunk, comment, off"):
        Settings(upstream="http://x", heartbeat_mode="loud")  # type: ignore[arg-type]


def test_a_port_in_use_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port_pair()))  # the next port free: the demo binds there first
        taken.listen()
        port = taken.getsockname()[1]
        serve = run("serve", "--upstream", "http://127.0.0.1:9", "--port", str(port))
        demo = run("demo", "--serve", "--port", str(port))
        demo_upstream = run("demo", "--serve", "--port", str(port - 1))  # its model server takes the next
    for result, flag in ((serve, "--port"), (demo, "--port"), (demo_upstream, "--port")):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"127.0.0.1:{port}" in result.stderr
        assert flag in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("--trace-dir", "{file}/traces"), {}, "--trace-dir"),
        (("--workers", "2"), {"PROMETHEUS_MULTIPROC_DIR": "{file}"}, "PROMETHEUS_MULTIPROC_DIR"),
        (("--upstream", "http://127.0.0.1:9/v1/chat/completions"), {}, "use 'http://127.0.0.1:9'"),
    ],
    ids=["trace-dir", "metrics-dir", "endpoint-url"],
)
def test_startup_mistakes_are_one_line_before_anything_starts(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = tuple(arg.replace("{file}", str(blocker)) for arg in args)
    env = {name: value.replace("{file}", str(blocker)) for name, value in env.items()}
    result = run("serve", "--upstream", "http://127.0.0.1:9", "--port", str(free_port()), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_startup_says_where_it_relays_and_whether_that_answers() -> None:
    port = free_port()
    command = [sys.executable, "-m", "sse_adapter", "serve", "--upstream", "http://u:pw@127.0.0.1:9"]
    process = subprocess.Popen(
        [*command, "--port", str(port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + STARTUP
        lines: list[str] = []
        while not any("relays to" in line for line in lines):
            assert time.monotonic() < deadline, lines
            lines.append(process.stderr.readline())
    finally:
        process.terminate()
        process.wait(10)
    [said] = [line for line in lines if "relays to" in line]
    assert "WARNING" in said
    assert "http://127.0.0.1:9, which does not answer yet" in said
    assert "pw" not in "".join(lines)


def test_version_and_no_bool_after_flags_in_help() -> None:
    version = run("--version")
    assert version.stdout.strip() == f"sse-adapter {__version__}"
    for command in ((), ("serve",), ("demo",), ("probe",)):
        shown = run(*command, "--help", env={"COLUMNS": "200"})
        assert shown.returncode == 0
        assert "<bool>" not in shown.stdout, command


@pytest.mark.parametrize(("command", "default"), [("probe", "chat"), ("demo", "all")])
def test_probe_and_demo_take_a_format_chat_by_default_for_probe(command: str, default: str) -> None:
    shown = run(command, "--help", env={"COLUMNS": "200"})
    assert shown.returncode == 0
    option = re.search(r"--format((?:(?!\s--[a-z]).)*)", shown.stdout, re.S)
    assert option is not None
    assert all(name in option[1] for name in ("chat", "responses", "messages", "all"))
    assert f"[default: {default}]" in option[1]


def test_the_package_says_what_it_is_and_pins_majors() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["license-files"] == ["LICENSE"]
    assert any(c.startswith("License :: OSI Approved :: MIT") for c in project["classifiers"])
    bounded = {re.split(r"[<>=~!; ]", requirement)[0]: requirement for requirement in project["dependencies"]}
    for name in ("fastapi", "httpx", "anyio", "typer", "uvicorn", "aiohttp", "httpx-aiohttp"):
        assert "<" in bounded[name], bounded[name]


CONFIG = """
upstream = "http://127.0.0.1:9"
port = 1                      # the env's port wins
heartbeat-interval = 0        # the flag's interval wins
drop_fields = ["logit_bias", "seed"]
final-usage-only = false

[models."qwen3-nothink"]
upstream_model = "Qwen/Qwen3-8B"
set = { chat_template_kwargs = { enable_thinking = false } }
defaults = { max_tokens = 4096 }
drop = ["logit_bias"]
"""


def test_a_config_file_sets_any_flag_and_env_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "adapter.toml"
    config.write_text(CONFIG)
    port = free_port()
    with serving(
        port, "--config", str(config), "--heartbeat-interval", "5", env={"SSE_ADAPTER_PORT": str(port)}
    ) as served:
        unreachable = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m"})
        assert unreachable.status_code == 502
    assert "sse-adapter relays to http://127.0.0.1:9," in served.output  # the file's upstream


def test_the_config_file_reaches_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from unittest import mock

    from sse_adapter import cli
    from sse_adapter.repair.request import ModelAlias

    config = tmp_path / "adapter.toml"
    config.write_text(CONFIG)
    for name in [name for name in os.environ if name.startswith("SSE_ADAPTER_")]:
        monkeypatch.delenv(name)
    with mock.patch("sse_adapter.server.run_server") as run_server, pytest.raises(SystemExit) as ended:
        cli.main(["serve", "--config", str(config), "--heartbeat-interval", "5", "--port", "8123"])
    assert ended.value.code == 0
    [settings], _ = run_server.call_args
    assert (settings.port, settings.heartbeat_interval) == (8123, 5.0)
    assert settings.drop_fields == ("logit_bias", "seed")
    assert settings.final_usage_only is False
    assert settings.models == (
        ModelAlias(
            "qwen3-nothink",
            "Qwen/Qwen3-8B",
            {"chat_template_kwargs": {"enable_thinking": False}},
            {"max_tokens": 4096},
            ("logit_bias",),
        ),
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus = 1\n", "'bogus' is no flag of 'sse-adapter serve'"),
        ("upstream = [\n", "is not valid TOML"),
        ('[models."a"]\nupstream = "x"\n', "unknown key 'upstream'"),
        ('[models."a"]\ndrop = ["messages"]\n', "drop cannot name"),
        ('upstream = "http://x"\ndrop-fields = "model"\n', "--drop-fields cannot drop model"),
        ('[models."a"]\nset = { stream = true }\n', '[models."a"]: set.stream cannot be given'),
        ('[models."a"]\ndefaults = { stream = false }\n', '[models."a"]: defaults.stream cannot be given'),
        (None, "cannot be read"),
    ],
    ids=[
        "unknown-key",
        "bad-toml",
        "bad-alias-key",
        "alias-drops-messages",
        "drops-model",
        "alias-sets-stream",
        "alias-defaults-stream",
        "missing",
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_code_2(tmp_path: Path, text: str | None, needle: str) -> None:
    config = tmp_path / "adapter.toml"
    if text is not None:
        config.write_text(text)
    result = run("serve", "--config", str(config), "--upstream", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    if text is not None and "[models." in text:
        assert str(config) in result.stderr  # the file, named


def test_the_config_help_shows_the_alias_table_name() -> None:
    result = run("serve", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert '[models."alias"] sections' in result.stdout  # rich's markup must not swallow it
