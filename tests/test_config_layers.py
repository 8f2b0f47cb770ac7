"""Every option of ``sse-adapter serve`` is layered one way: a flag wins over its env
variable, which wins over the --config file, which wins over the default. And a bad value
says where it came from: the file and its key, or the env variable."""

from __future__ import annotations

import enum
import inspect
import json
import os
import types
import typing
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from sse_adapter import cli
from sse_adapter.settings import Settings

SKIPPED = {"ctx", "config"}


def options() -> dict[str, type]:
    """serve's options and the type each takes, from its signature."""
    found = {}
    for name, hint in typing.get_type_hints(cli.serve).items():
        if name in SKIPPED or name == "return":
            continue
        if isinstance(hint, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        found[name] = list if typing.get_origin(hint) is list else hint
    assert set(found) == set(inspect.signature(cli.serve).parameters) - SKIPPED
    return found


DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(cli.serve).parameters.items()}
STRINGS = {
    "upstream": ["http://file:1", "http://env:2", "http://flag:3"],
    "log_level": ["debug", "warning", "error"],
    "drop_fields": ["file_field", "env_field", "flag_field"],
}


def layer_values(name: str, kind: type) -> list[Any]:
    """Three values, for the file, the env and the flag: each unlike the layer below it."""
    if kind is bool:
        return [True, False, True]
    if kind is int or kind is float:
        start = DEFAULTS[name] or 0
        return [kind(start + step) for step in (1, 2, 3)]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = [member.value for member in kind if member != DEFAULTS[name]]
        default = DEFAULTS[name].value
        if len(choices) >= 3:
            return choices[:3]
        if len(choices) == 2:
            return [choices[0], choices[1], choices[0]]
        return [choices[0], default, choices[0]]
    if kind is list:
        return [["file-key"], ["env-key"], ["flag-key"]]
    return STRINGS.get(name, [f"/file-{name}", f"/env-{name}", f"/flag-{name}"])


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def env(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def flag(name: str, value: Any) -> list[str]:
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [option]  # a bare flag: it can only say true
    if isinstance(value, list):
        return [arg for item in value for arg in (option, item)]
    return [option, str(value)]


def expected(name: str, value: Any) -> object:
    """The Settings field a value of the option ends as."""
    if DEFAULTS[name] in (cli.Switch.ON, cli.Switch.OFF):
        return value == "on"
    if name == "api_key":
        return tuple(value)
    if name == "drop_fields":
        return (value,)
    return value


FIELD = {"api_key": "api_keys"}


def serve(args: list[str], environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings serve would run with, given the flags and the env."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with mock.patch("sse_adapter.server.run_server") as run_server, pytest.raises(SystemExit) as ended:
        cli.main(["serve", *args])
    assert ended.value.code == 0
    [settings], _ = run_server.call_args
    assert isinstance(settings, Settings)
    return settings


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("SSE_ADAPTER_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("name", sorted(options()))
def test_flag_beats_env_beats_file_beats_default(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = options()[name]
    in_file, in_env, in_flag = layer_values(name, kind)
    config = tmp_path / "adapter.toml"
    key = name.replace("_", "-")
    config.write_text(f"{key} = {toml(in_file)}\n")
    base = [] if name == "upstream" else ["--upstream", "http://base:9"]
    variable = {f"SSE_ADAPTER_{name.upper()}": env(in_env)}
    field = FIELD.get(name, name)
    assert getattr(Settings(upstream="http://x"), field) != expected(name, in_file)  # the file changes it

    with monkeypatch.context() as layer:
        from_file = serve([*base, "--config", str(config)], {}, layer)
    with monkeypatch.context() as layer:
        from_env = serve([*base, "--config", str(config)], variable, layer)
    with monkeypatch.context() as layer:
        from_flag = serve([*base, "--config", str(config), *flag(name, in_flag)], variable, layer)
    assert getattr(from_file, field) == expected(name, in_file)
    assert getattr(from_env, field) == expected(name, in_env)
    assert getattr(from_flag, field) == expected(name, in_flag)


def test_the_api_key_env_var_takes_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--upstream", "http://base:9"]
    with monkeypatch.context() as layer:
        assert serve(base, {"SSE_ADAPTER_API_KEY": "sk-a, sk-b,,"}, layer).api_keys == ("sk-a", "sk-b")
    with monkeypatch.context() as layer:
        flagged = serve([*base, "--api-key", "sk-flag"], {"SSE_ADAPTER_API_KEY": "sk-a,sk-b"}, layer)
    assert flagged.api_keys == ("sk-flag",)


@pytest.mark.parametrize(
    ("text", "args", "environ", "needle"),
    [
        pytest.param(
            'api-key = "k1,k2"\n', [], {}, 'api-key = "k1,k2": must be a list of strings', id="api-key-string"
        ),
        pytest.param(
            'trace-bodies = "yes"\n', [], {}, 'trace-bodies = "yes": must be true or false', id="bool-string"
        ),
        pytest.param('port = "abc"\n', [], {}, 'port = "abc": must be a whole number', id="port-string"),
        pytest.param("port = true\n", [], {}, "port = true: must be a whole number", id="port-bool"),
        pytest.param(
            'map-finish-reason = "maybe"\n',
            [],
            {},
            'map-finish-reason = "maybe": must be one of on, off (or true or false)',
            id="bad-switch",
        ),
        pytest.param(
            "heartbeat-interval = 0\n",
            [],
            {},
            "heartbeat-interval: --heartbeat-interval must be more than 0",
            id="file-value-settings-refuse",
        ),
        pytest.param(
            "",
            [],
            {"SSE_ADAPTER_HEARTBEAT_INTERVAL": "0"},
            "SSE_ADAPTER_HEARTBEAT_INTERVAL: --heartbeat-interval must be more than 0",
            id="env-value-settings-refuse",
        ),
        pytest.param("", ["--port", "0"], {}, "--port must be between 1 and 65535, got 0", id="port-0"),
        pytest.param(
            "", [], {"SSE_ADAPTER_PORT": "0"}, "SSE_ADAPTER_PORT: --port must be between 1", id="env-port-0"
        ),
    ],
)
def test_a_bad_value_says_where_it_came_from(
    text: str,
    args: list[str],
    environ: dict[str, str],
    needle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "adapter.toml"
    config.write_text(text)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with mock.patch("sse_adapter.server.run_server") as run_server, pytest.raises(SystemExit) as ended:
        cli.main(["serve", "--upstream", "http://base:9", "--config", str(config), *args])
    said = capsys.readouterr().err
    assert ended.value.code == 2
    assert not run_server.called
    assert needle in said
    assert said.count("\n") == 1, said  # one line
    if text:
        assert f"--config {str(config)!r}" in said  # the file, by name
        assert "SSE_ADAPTER_" not in said  # not an env variable the value did not come from
