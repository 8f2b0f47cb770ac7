"""What goes upstream (pure): the client's body, sanitised, aliased, with usage asked for.

Gateways and clients send fields that model servers reject (shared/
upstream-dialects.md, "Request fields that servers reject"), and most
servers send a stream's usage only when asked. The body is rewritten only
where a repair is due; otherwise the client's bytes go up as they came.
Rejections are read from the server's own error (:func:`rejected_fields`),
so the relay can send the request once more without the fields named, and
later requests can go without those the server refuses whatever their value.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from sse_adapter.repair.body import Members, parse_lenient
from sse_adapter.repair.think import prompt_opens_think

__all__ = [
    "NEVER_DROPPED",
    "NEVER_SET",
    "ModelAlias",
    "Outgoing",
    "Rejection",
    "deep_merge",
    "prepare",
    "rejected_fields",
]

# Without these there is no request: a server that rejects them rejects the request.
NEVER_DROPPED = frozenset({"model", "messages", "prompt", "input", "stream"})
# The client's alone: whether it reads a stream or one JSON body is what it
# asked for, and what the adapter answers it with (an alias cannot set it).
NEVER_SET = frozenset({"stream"})

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
    """A request as it goes upstream, and what the relay needs to know of it.

    Only the body is kept, not its parsed tree (5 to 40 times its size, for
    the request's whole life): the few fields read later are read from it
    (see repair/body.py)."""

    body: bytes
    stream: bool
    model: str  # as the client named it: the name every chunk and body carries back
    aliased: bool  # the model is an alias: the upstream's name is replaced by ``model`` in answers
    usage_asked: bool  # the client asked for stream usage itself: it gets OpenAI's usage-only chunk
    repairs: Counter[str]
    offers_tools: bool = False  # toolcalls.offers_tools of the request, read without parsing the tools
    usage_refused: bool = False  # the client's stream said include_usage: false itself

    @property
    def fields(self) -> dict[str, Any]:
        """The whole body parsed, anew on each call: for the rare path that
        reads all of it (counting tokens)."""
        return parse_lenient(self.body)

    def get(self, name: str) -> Any:
        """One top-level field's value (None when absent), the others left unparsed."""
        return Members(self.body).get(name)

    def opens_think(self) -> bool | None:
        """Whether the request says its chat template opens ``<think>`` in the
        prompt (:func:`~sse_adapter.repair.think.prompt_opens_think`)."""
        return prompt_opens_think({"chat_template_kwargs": self.get("chat_template_kwargs")})

    def with_fields(self, **values: Any) -> Outgoing:
        """The same request with these fields set (the rest of the body as it was)."""
        members = Members(self.body)
        for name, value in values.items():
            members.set(name, value)
        return replace(self, body=members.encoded(), offers_tools=_offers_tools(members))

    def without(self, names: Iterable[str]) -> Outgoing:
        """The same request without these fields (never those the request needs)."""
        members = Members(self.body)
        repairs = Counter(self.repairs)
        if dropped := _drop(members, names):
            repairs["request_field_dropped"] += dropped
        return replace(self, body=members.encoded(), repairs=repairs, offers_tools=_offers_tools(members))


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
    non-stream request, and a null one leaves any request. Memory: about
    twice the body's size, whatever its shape (repair/body.py).
    """
    members = Members(body)
    model = members.get("model")
    model = model if isinstance(model, str) else ""
    stream = members.is_true("stream")
    repairs: Counter[str] = Counter()
    alias = (models or {}).get(model)
    if alias is not None:
        _apply_alias(members, alias, repairs)
    options = members.get("stream_options", _ABSENT)
    if options is not _ABSENT and (options is None or not stream):
        members.pop("stream_options")
        repairs["stream_options_removed"] += 1
    said = options.get("include_usage") if stream and isinstance(options, dict) else None
    usage_asked, usage_refused = said is True, said is False
    if stream and ask_usage and not usage_asked:
        kept = options if isinstance(options, dict) else {}
        members.set("stream_options", {**kept, "include_usage": True})
        repairs["stream_usage_asked"] += 1
    if dropped := _drop(members, drop):
        repairs["request_field_dropped"] += dropped
    rewritten = members.encoded() if repairs else body
    tools = _offers_tools(members)
    return Outgoing(rewritten, stream, model, alias is not None, usage_asked, repairs, tools, usage_refused)


def _offers_tools(members: Members) -> bool:
    """toolcalls.offers_tools, with the tools read as far as their first element."""
    return members.is_nonempty_array("tools") and members.get("tool_choice") != "none"


def _drop(members: Members, names: Iterable[str]) -> int:
    """Remove the named fields a request can do without; how many it had."""
    return sum(name not in NEVER_DROPPED and members.pop(name) for name in set(names))


def _apply_alias(members: Members, alias: ModelAlias, repairs: Counter[str]) -> None:
    # Only the fields the alias names are parsed, merged and written back.
    named = {name: members.get(name) for name in (*alias.set, *alias.defaults) if name in members}
    deep_merge(named, alias.set)
    _fill_missing(named, alias.defaults)
    for name, value in named.items():
        members.set(name, value)
    _drop(members, alias.drop)
    if alias.upstream_model is not None:
        members.set("model", alias.upstream_model)
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


@dataclass(frozen=True, slots=True)
class Rejection:
    """What a server's error says it refused, weighed against the request that got it."""

    drop: frozenset[str] = frozenset()  # the fields to send this request again without
    learn: frozenset[str] = frozenset()  # of those, the ones later requests go without too


@dataclass(frozen=True, slots=True)
class _Wording:
    """One way a server words a refusal in its message."""

    server: str
    pattern: re.Pattern[str]  # its group is the field's name, unless ``field`` names it
    field: str = ""
    null: bool = False  # it refuses the field's null, not the field: the field's values are fine


# How each server names the fields it refuses, read from its error message.
# Only top-level fields count: a nested one (``messages.0.name``) cannot be
# dropped without changing what the request says.
_MESSAGES = (
    # vLLM < 0.6.5 and other pydantic servers, its errors' repr in the message
    _Wording("vLLM (pydantic list)", re.compile(r"'type': 'extra_forbidden', 'loc': \('body', '(\w+)'\)")),
    # vLLM with strict validation: pydantic's own text
    _Wording("vLLM (pydantic text)", re.compile(r"^(\w+)\n\s+Extra inputs are not permitted", re.MULTILINE)),
    # vLLM: 400 to stream_options on a non-stream request
    _Wording(
        "vLLM (stream options)",
        re.compile(r"Stream options can only be defined when stream=True"),
        field="stream_options",
    ),
    # TGI (axum + serde): a null it cannot read, or an unknown field (top level: no path before it)
    _Wording("TGI (null)", re.compile(r"target type: (\w+): invalid type: null"), null=True),
    _Wording("TGI (unknown)", re.compile(r"target type: unknown field `(\w+)`")),
    # llama.cpp server: parameters OpenAI has and it does not
    _Wording("llama.cpp", re.compile(r"Unsupported param: (\w+)")),
)
_UNEXPECTED = re.compile(r"Unexpected fields in the request: (\{.*\})")  # transformers serve
# OpenAI's codes for a field it does not take; ``param`` names the field.
# Without one of them a ``param`` names the field whose *value* was wrong
# (vLLM: "max_tokens must be at least 1"): no refusal of the field.
_PARAM_REFUSALS = frozenset({"unknown_parameter", "unsupported_parameter"})
# A server's words naming a field are checked against the request's strings,
# at most this many distinct ones per error: each check reads the request once.
_MOST_WORDINGS = 32


@dataclass(frozen=True, slots=True)
class _Claim:
    """An error's statement that the server refused a field (or its null)."""

    name: str
    null: bool
    words: str | None  # the text of its message that says so; None: a structured location


def rejected_fields(status: int, body: bytes, request: bytes) -> Rejection:
    """What an error answer to ``request`` (the body sent) says the server refused.

    A refusal is heard only where the server itself names the field: a
    structured location (FastAPI's ``{"detail": [{"type": "extra_forbidden",
    "loc": ["body", name]}]}``, an OpenAI ``param`` with an unknown-parameter
    ``code``), or its own words in the shapes of :data:`_MESSAGES` and
    transformers serve's ``Unexpected fields in the request: {'x'}`` -- words
    that stand in no string of the request: servers echo the values they
    were sent (pydantic's ``input``), and a client must not be able to write
    a refusal for the server.

    A field that is null in this request is dropped from it, never learned;
    a refusal of a null names no field to drop when the request's value is
    not null. The request is read from its bytes, never parsed whole: a
    refusal of a large request costs no more memory than the request.
    """
    if status not in _REJECTING:
        return Rejection()
    members = Members(request)
    text = body.decode("utf-8", "replace")
    try:
        parsed: object = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = text
    claims = [claim for claim in _claims(parsed) if claim.name in members and claim.name not in NEVER_DROPPED]
    heard = _unechoed({claim.words for claim in claims if claim.words is not None}, request)
    drop: set[str] = set()
    learn: set[str] = set()
    for claim in claims:
        if claim.words is not None and claim.words not in heard:
            continue
        if members.is_null(claim.name):
            drop.add(claim.name)  # this null only: the field's values may be fine
        elif not claim.null:
            drop.add(claim.name)
            learn.add(claim.name)
    return Rejection(frozenset(drop), frozenset(learn))


def _claims(parsed: object) -> Iterator[_Claim]:
    yield from _located(parsed)
    for message in _strings(parsed):
        yield from _worded(message)


def _worded(message: str) -> Iterator[_Claim]:
    for wording in _MESSAGES:
        for match in wording.pattern.finditer(message):
            name = wording.field or match.group(1)
            yield _Claim(name, wording.null, match.group(0))
    for match in _UNEXPECTED.finditer(message):
        try:
            listed = ast.literal_eval(match.group(1))  # a Python set's repr
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(listed, set):
            yield from (_Claim(name, False, match.group(0)) for name in listed if isinstance(name, str))


def _located(parsed: object) -> Iterator[_Claim]:
    """Refusals in structured fields: FastAPI's ``detail`` list, OpenAI's ``param``."""
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    for item in detail if isinstance(detail, list) else ():
        if not isinstance(item, dict):
            continue
        location = item.get("loc")
        if not (isinstance(location, list) and len(location) == 2 and location[0] == "body"):
            continue
        name = location[1]
        if not isinstance(name, str):
            continue
        if item.get("type") == "extra_forbidden":
            yield _Claim(name, False, None)
        elif "input" in item and item["input"] is None:
            yield _Claim(name, True, None)  # pydantic refused the null it was given
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        param = error.get("param")
        if isinstance(param, str) and _PARAM_REFUSALS & {error.get("code"), error.get("type")}:
            yield _Claim(param, False, None)


def _unechoed(words: set[str], request: bytes) -> set[str]:
    """Those of ``words`` (at most :data:`_MOST_WORDINGS`) that stand nowhere
    in the request, keys and values, as decoded: a JSON escape (``\\u0073``)
    hides nothing.

    A word is first looked for in the request's bytes as they are (a match
    across two strings can only look echoed, and a refusal that looks echoed
    is not heard: the upstream's answer goes to the client as it came); then
    in each string that has an escape, decoded alone. Time: linear in the
    request's size; memory: about three times its longest escaped string.
    """
    left = {word for word in sorted(words)[:_MOST_WORDINGS] if request.find(word.encode()) < 0}
    if not left or request.find(b"\\") < 0:
        return left
    for string in _STRING.finditer(request):
        if request.find(b"\\", string.start(), string.end()) < 0:
            continue
        # json, not orjson: orjson takes some 13 times a long string's size to decode it
        text = json.loads(string.group())
        left = {word for word in left if word not in text}
        if not left:
            break
    return left


# A JSON string token in a valid document: quotes delimit only strings there.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


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
