"""What goes upstream (pure): the client's body, sanitised, aliased, with usage asked for.

Gateways and clients send fields that model servers reject (shared/
upstream-dialects.md, "Request fields that servers reject"), and most
servers send a stream's usage only when asked. The body is rewritten only
where a repair is due; otherwise the client's bytes go up as they came.
Rejections are read from the server's own error (:func:`rejected_fields`),
so the relay can send the request once more without the fields named.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from sse_adapter.errors import InvalidJSON
from sse_adapter.repair.dialects import excerpt, json_or_none

__all__ = [
    "NEVER_DROPPED",
    "ModelAlias",
    "Outgoing",
    "deep_merge",
    "prepare",
    "rejected_fields",
]

# Without these there is no request: a server that rejects them rejects the request.
NEVER_DROPPED = frozenset({"model", "messages", "prompt", "stream"})

# Statuses a server refuses a field with. llama.cpp before 2025 said 500.
_REJECTING = frozenset({400, 422, 500})


@dataclass(frozen=True, slots=True)
class ModelAlias:
    """A model name clients ask for, served by the upstream's model with
    fields set, defaulted or dropped (``[models."name"]`` in the config file)."""

    name: str
    upstream_model: str | None = None
    set: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A request as it goes upstream, and what the relay needs to know of it."""

    fields: dict[str, Any]
    body: bytes
    stream: bool
    model: str  # as the client named it: the name every chunk and body carries back
    aliased: bool  # the model is an alias: the upstream's name is replaced by ``model`` in answers
    usage_asked: bool  # the client asked for stream usage itself: it gets OpenAI's usage-only chunk
    repairs: Counter[str]

    def with_field(self, name: str, value: Any) -> Outgoing:
        """The same request with one field set (the body written anew)."""
        fields = {**self.fields, name: value}
        return replace(self, fields=fields, body=orjson.dumps(fields))

    def without(self, names: Iterable[str]) -> Outgoing:
        """The same request without these fields (never those the request needs)."""
        fields = dict(self.fields)
        repairs = Counter(self.repairs)
        if dropped := _drop(fields, names):
            repairs["request_field_dropped"] += dropped
        return replace(self, fields=fields, body=orjson.dumps(fields), repairs=repairs)


_ABSENT = object()


def prepare(
    body: bytes,
    *,
    ask_usage: bool,
    drop: Iterable[str] = (),
    models: Mapping[str, ModelAlias] | None = None,
) -> Outgoing:
    """The body to send for a chat or completion request.

    ``ask_usage`` adds ``stream_options.include_usage`` to a stream that
    lacks it; ``drop`` names fields never sent (``--drop-fields`` and those
    the upstream has rejected before). ``stream_options`` leaves a
    non-stream request, and a null one leaves any request.
    """
    fields = _object(body)
    model = fields.get("model")
    model = model if isinstance(model, str) else ""
    stream = fields.get("stream") is True
    repairs: Counter[str] = Counter()
    alias = (models or {}).get(model)
    if alias is not None:
        _apply_alias(fields, alias, repairs)
    options = fields.get("stream_options", _ABSENT)
    if options is not _ABSENT and (options is None or not stream):
        del fields["stream_options"]
        repairs["stream_options_removed"] += 1
    usage_asked = stream and isinstance(options, dict) and options.get("include_usage") is True
    if stream and ask_usage and not usage_asked:
        kept = options if isinstance(options, dict) else {}
        fields["stream_options"] = {**kept, "include_usage": True}
        repairs["stream_usage_asked"] += 1
    if dropped := _drop(fields, drop):
        repairs["request_field_dropped"] += dropped
    rewritten = orjson.dumps(fields) if repairs else body
    return Outgoing(fields, rewritten, stream, model, alias is not None, usage_asked, repairs)


def _drop(fields: dict[str, Any], names: Iterable[str]) -> int:
    """Remove the named fields a request can do without; how many it had."""
    return sum(name not in NEVER_DROPPED and fields.pop(name, _ABSENT) is not _ABSENT for name in names)


def _object(body: bytes) -> dict[str, Any]:
    fields = json_or_none(body)
    if not isinstance(fields, dict):
        raise InvalidJSON(f"the request body is not a JSON object: {excerpt(body)!r}")
    return fields


def _apply_alias(fields: dict[str, Any], alias: ModelAlias, repairs: Counter[str]) -> None:
    deep_merge(fields, alias.set)
    _fill_missing(fields, alias.defaults)
    _drop(fields, alias.drop)
    if alias.upstream_model is not None:
        fields["model"] = alias.upstream_model
    repairs["model_alias"] += 1


def deep_merge(into: dict[str, Any], values: Mapping[str, Any]) -> None:
    """``values`` over ``into``: tables merge key by key, anything else replaces."""
    for name, value in values.items():
        current = into.get(name)
        if isinstance(value, Mapping) and isinstance(current, dict):
            deep_merge(current, value)
        else:
            into[name] = _copy(value)


def _fill_missing(into: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """``defaults`` only where the client sent nothing, table by table."""
    for name, value in defaults.items():
        current = into.get(name, _ABSENT)
        if current is _ABSENT or current is None:
            into[name] = _copy(value)
        elif isinstance(value, Mapping) and isinstance(current, dict):
            _fill_missing(current, value)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {name: _copy(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value


# How each server names the fields it refuses, read from its error message.
# Only top-level fields count: a nested one (``messages.0.name``) cannot be
# dropped without changing what the request says.
# A pattern with no group names one field itself.
_MESSAGES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # vLLM < 0.6.5 and other pydantic servers, its errors' repr in the message
    ("vLLM (pydantic list)", re.compile(r"'type': 'extra_forbidden', 'loc': \('body', '(\w+)'\)"), ""),
    # vLLM with strict validation: pydantic's own text
    ("vLLM (pydantic text)", re.compile(r"^(\w+)\n\s+Extra inputs are not permitted", re.MULTILINE), ""),
    # vLLM: 400 to stream_options on a non-stream request
    (
        "vLLM (stream options)",
        re.compile(r"Stream options can only be defined when stream=True"),
        "stream_options",
    ),
    # TGI (axum + serde): a null it cannot read, or an unknown field (top level: no path before it)
    ("TGI (null)", re.compile(r"target type: (\w+): invalid type: null"), ""),
    ("TGI (unknown)", re.compile(r"target type: unknown field `(\w+)`"), ""),
    # llama.cpp server: parameters OpenAI has and it does not
    ("llama.cpp", re.compile(r"Unsupported param: (\w+)"), ""),
)
_UNEXPECTED = re.compile(r"Unexpected fields in the request: (\{.*\})")  # transformers serve


def rejected_fields(status: int, body: bytes) -> frozenset[str]:
    """The top-level request fields an error answer says the server refused.

    Shapes: FastAPI's ``{"detail": [{"type": "extra_forbidden", "loc":
    ["body", name]}]}`` (transformers serve, strict servers); transformers
    serve's ``Unexpected fields in the request: {'x'}``; the messages of
    :data:`_MESSAGES`, wherever the error object puts them.
    """
    if status not in _REJECTING:
        return frozenset()
    text = body.decode("utf-8", "replace")
    try:
        parsed: object = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = text
    names = set(_forbidden_locations(parsed))
    for message in _strings(parsed):
        names.update(_named_in(message))
    return frozenset(names - NEVER_DROPPED)


def _named_in(message: str) -> Iterator[str]:
    for _, pattern, named in _MESSAGES:
        if named:
            if pattern.search(message):
                yield named
        else:
            yield from pattern.findall(message)
    unexpected = _UNEXPECTED.search(message)
    if unexpected is not None:
        try:
            listed = ast.literal_eval(unexpected.group(1))  # a Python set's repr
        except (ValueError, SyntaxError):
            return
        if isinstance(listed, set):
            yield from (name for name in listed if isinstance(name, str))


def _forbidden_locations(parsed: object) -> Iterator[str]:
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    for item in detail if isinstance(detail, list) else ():
        if not isinstance(item, dict) or item.get("type") != "extra_forbidden":
            continue
        location = item.get("loc")
        if isinstance(location, list) and len(location) == 2 and location[0] == "body":
            yield from (name for name in location[1:] if isinstance(name, str))


def _strings(value: object, depth: int = 0) -> Iterator[str]:
    """Every string in an error body: servers nest their message differently."""
    if isinstance(value, str):
        yield value
    elif depth < 4 and isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif depth < 4 and isinstance(value, list):
        for item in value[:50]:
            yield from _strings(item, depth + 1)
