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
``heartbeat_interval``). Flags and env variables win over the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from typing import Any

from sse_adapter.repair.request import NEVER_DROPPED, NEVER_SET, ModelAlias
from sse_adapter.settings import SettingsError

__all__ = ["read_config"]

_ALIAS_KEYS = frozenset({"upstream_model", "set", "defaults", "drop"})


def read_config(path: str, flags: Collection[str]) -> tuple[dict[str, Any], tuple[ModelAlias, ...]]:
    """The flag values (by parameter name) and the model aliases a file sets."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"--config {path!r} cannot be read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"--config {path!r} is not valid TOML: {error}") from None
    models = table.pop("models", {})
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in flags:
            raise SettingsError(
                f"--config {path!r}: {key!r} is no flag of 'sse-adapter serve' (see its --help); "
                'model aliases go under [models."name"]'
            )
        values[name] = value
    return values, _aliases(path, models)


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
