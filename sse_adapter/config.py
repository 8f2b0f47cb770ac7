"""The ``--config`` file (TOML): a value for any flag, and model aliases.

    upstream = "http://127.0.0.1:8080"
    heartbeat-interval = 5
    drop-fields = ["logit_bias"]

    [models."qwen3-nothink"]
    upstream_model = "Qwen/Qwen3-8B"
    set = { chat_template_kwargs = { enable_thinking = false } }
    defaults = { max_tokens = 4096 }
    drop = ["logit_bias"]

A flag's key is its name without the dashes (``heartbeat-interval`` or
``heartbeat_interval``). Each value has the TOML type of its flag: a number,
a string, ``true``/``false`` for on/off switches and for ``trace-bodies``, a
list of strings for ``api-key`` (and for ``drop-fields``, which also takes a
comma list). Every option is layered the same way: a flag wins over its env
variable, which wins over the file, which wins over the default.
"""

from __future__ import annotations

import enum
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sse_adapter.repair.request import NEVER_DROPPED, NEVER_SET, ModelAlias
from sse_adapter.settings import SettingsError

__all__ = ["Kind", "read_config"]

_ALIAS_KEYS = frozenset({"upstream_model", "set", "defaults", "drop"})


@dataclass(frozen=True, slots=True)
class Kind:
    """What a flag takes, to check a config file's value for it against: ``bool``, ``int``,
    ``float``, ``str``, ``list`` (of strings), or an enum of the choices."""

    type: type
    comma_list: bool = False  # a string flag that holds a comma list: a TOML list is taken too


@dataclass(frozen=True, slots=True)
class Config:
    """What a file sets: flag values as the flags take them, by parameter name; the
    keys as the file spells them (for messages); the model aliases."""

    values: dict[str, Any]
    keys: dict[str, str]
    models: tuple[ModelAlias, ...]


def read_config(path: str, kinds: Mapping[str, Kind]) -> Config:
    """The flag values and the model aliases a file sets, each value checked against its flag."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"--config {path!r} cannot be read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"--config {path!r} is not valid TOML: {error}") from None
    models = table.pop("models", {})
    values, keys = {}, {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in kinds:
            raise SettingsError(
                f"--config {path!r}: {key!r} is no flag of 'sse-adapter serve' (see its --help); "
                'model aliases go under [models."name"]'
            )
        values[name] = _value(f"--config {path!r}: {key} = {_shown(value)}", kinds[name], value)
        keys[name] = key
    return Config(values, keys, _aliases(path, models))


def _value(where: str, kind: Kind, value: object) -> object:
    """The value as its flag takes it; a SettingsError that names the file and the key if the
    TOML type is not the flag's (TOML has types: "yes" is no boolean, "a,b" no list)."""
    if kind.type is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{where}: must be true or false")
    if isinstance(kind.type, type) and issubclass(kind.type, enum.Enum):
        choices = [str(member.value) for member in kind.type]
        switch = choices == ["on", "off"]
        if switch and isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str) and value in choices:
            return value
        also = " (or true or false)" if switch else ""
        raise SettingsError(f"{where}: must be one of {', '.join(choices)}{also}")
    if kind.type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SettingsError(f"{where}: must be a whole number")
    if kind.type is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise SettingsError(f"{where}: must be a number of seconds")
    strings = isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind.type is list:
        if strings:
            return value
        raise SettingsError(f'{where}: must be a list of strings, such as ["a", "b"]')
    if isinstance(value, str):
        return value
    if kind.comma_list and strings:
        return ",".join(value)  # type: ignore[arg-type]
    raise SettingsError(f"{where}: must be a string" + (" or a list of strings" if kind.comma_list else ""))


def _shown(value: object) -> str:
    """A value as TOML would spell it, near enough for a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _aliases(path: str, models: object) -> tuple[ModelAlias, ...]:
    if not isinstance(models, dict):
        raise SettingsError(f'--config {path!r}: models must be tables, [models."name"]')
    return tuple(_alias(path, name, entry) for name, entry in models.items())


def _alias(path: str, name: str, entry: object) -> ModelAlias:
    where = f'--config {path!r}, [models."{name}"]'
    if not isinstance(entry, dict):
        raise SettingsError(f"{where} must be a table")
    unknown = sorted(set(entry) - _ALIAS_KEYS)
    if unknown:
        raise SettingsError(
            f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(_ALIAS_KEYS))}"
        )
    upstream_model = entry.get("upstream_model")
    if upstream_model is not None and not (isinstance(upstream_model, str) and upstream_model):
        raise SettingsError(f"{where}: upstream_model must be a model name")
    for key in ("set", "defaults"):
        values = entry.get(key, {})
        if not isinstance(values, dict):
            raise SettingsError(f"{where}: {key} must be a table, such as {{ max_tokens = 4096 }}")
        given = sorted(NEVER_SET.intersection(values))
        if given:
            raise SettingsError(
                f"{where}: {key}.{given[0]} cannot be given: whether an answer streams is each client's "
                f'choice (its own "{given[0]}"), and the adapter answers by it'
            )
    drop = entry.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(field, str) for field in drop):
        raise SettingsError(f'{where}: drop must be a list of field names, such as ["logit_bias"]')
    if NEVER_DROPPED.intersection(drop):
        raise SettingsError(f"{where}: drop cannot name {', '.join(sorted(NEVER_DROPPED))}")
    return ModelAlias(name, upstream_model, entry.get("set", {}), entry.get("defaults", {}), tuple(drop))
