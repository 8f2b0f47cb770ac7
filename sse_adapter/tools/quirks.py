"""Names what is off in an upstream's raw stream, and what the adapter repairs (pure).

``framing_quirks`` reads the bytes a model server sent and lists the quirks
of shared/upstream-dialects.md it shows. ``read_as_relay`` runs the
adapter's own decode-and-repair pipeline over the same bytes: the text it
yields, whether it ends in an error, and what it changed, so what the demo
and the probe report is what the relay does. ``typed_quirks`` and
``read_typed`` do the same for Responses and Messages streams, whose
faults are others (shared/formats.md): no terminal event, comments for
keep-alives, sequence numbers that skip, error events a client drops.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from sse_adapter.errors import AdapterError, UpstreamReported
from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.dialects import body_error, is_real_usage
from sse_adapter.repair.format import Format, StreamFormat
from sse_adapter.repair.messages import MessagesRepairer
from sse_adapter.repair.pipeline import Pipeline
from sse_adapter.repair.responses import ResponsesRepairer
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.settings import Settings
from sse_adapter.sse.decoder import SSEDecoder
from sse_adapter.tools.agentclient import TERMINALS
from sse_adapter.tools.oneapi import LINE_LIMIT

__all__ = [
    "LABELS",
    "Reading",
    "TypedReading",
    "describe",
    "framing_quirks",
    "no_text",
    "read_as_relay",
    "read_typed",
    "server_said",
    "shown_text",
    "typed_quirks",
]

LABELS = {
    # framing, as read from the raw bytes
    "no_space_after_data": "`data:` with no space (One-API drops the line)",
    "crlf_line_ends": "CRLF line ends",
    "cr_line_ends": "CR-only line ends (One-API sees one endless line)",
    "multi_line_payload": "a payload over several `data:` lines",
    "missing_done": "no [DONE] at the end",
    "comment_pings": "comment pings (never reach One-API's client)",
    "sse_fields": "event:/id:/retry: fields",
    "bom": "a leading BOM",
    "legacy_error_line": "a bare `error:` line (not SSE)",
    "line_over_64k": "a line over 64 KiB (stops One-API's scanner)",
    # chunks, as counted by the repair pipeline
    "id_unified": "chunk ids unified",
    "object_filled": "`object` filled in",
    "created_filled": "`created` filled in",
    "finish_reason_filled": "`finish_reason` filled in",
    "finish_reason_mapped": "`finish_reason` mapped to OpenAI's",
    "reasoning_renamed": "reasoning put under `reasoning_content`",
    "think_split": "<think> moved to reasoning",
    "usage_moved_last": "usage moved after the last chunk with choices",
    "empty_usage_dropped": "null or zero usage dropped",
    "non_chunk_dropped": "events that are no chunks dropped",
    "bulky_field_dropped": "bulky fields dropped",
    "long_line_split": "long line split",
    "error_shape": "error turned into an OpenAI error chunk",
    "tool_call_index_filled": "tool-call `index` filled in",
    "tool_call_id_filled": "tool-call `id` filled in",
    "tool_call_type_filled": "tool-call `type` filled in",
    "tool_call_repeat_dropped": "repeated tool-call id, type or name dropped",
    "tool_call_arguments_string": "tool-call arguments made a string",
    "tool_call_finish_reason": "`finish_reason` made `tool_calls`",
    "tool_call_tags_split": "<tool_call> text made a tool call",
    "usage_on_last_chunk": "usage put on the last chunk",
    "usage_counted": "usage counted with the upstream's tokenizer",
    "usage_placeholder": "placeholder usage taken as none (no prompt tokens, none for text, a wrong total)",
    "usage_from_timings": "usage taken from llama-server's timings",
    "usage_total_filled": "usage's missing total_tokens filled in",
    "model_renamed": "model alias named in the answer",
    "start_usage_filled": "usage filled into message_start (the SDK raises without)",
    "reasoning_in_think_tags": "reasoning put in content inside <think>",
    # requests, as prepared for the upstream
    "stream_usage_asked": "stream usage asked for",
    "stream_options_removed": "`stream_options` removed",
    "request_field_dropped": "request field dropped",
    "model_alias": "model alias applied",
    # Responses and Messages streams, as read from their events
    "comment_keepalives": "comments for keep-alives (new-api drops them: none reaches the client)",
    "no_terminal": "no terminal event (the client cannot tell a cut answer from a whole one)",
    "sequence_gaps": "sequence numbers that skip or repeat",
    "response_ids": "more than one response id",
    "created_not_first": "an event before response.created (the SDK's responses.stream() raises)",
    "start_not_first": "an event before message_start",
    "error_event": "an `error` event (Codex drops its message)",
    "error_event_untyped": "an error event with no `type` (new-api names events by it: no client sees it)",
    "not_json": "a data line that is no JSON object (new-api stops there)",
    "line_over_limit": "a line over --max-line-bytes",
    # and what the adapter does to them
    "sequence_renumbered": "sequence numbers renumbered",
    "response_created_replaced": "the upstream's response.created replaced by the adapter's",
    "response_failed_added": "the failure ended in one response.failed",
    "error_event_added": "the failure ended in one Anthropic `event: error`",
    "usage_missing": "usage missing: counted with the server's tokenizer",
    "silences_filled": "silences over the heartbeat interval filled with typed heartbeats",
}

_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|$)")


def framing_quirks(raw: bytes) -> Counter[str]:
    """The framing quirks in a raw upstream body, each with how often it occurs."""
    found: Counter[str] = Counter()
    if raw.startswith(b"\xef\xbb\xbf"):
        found["bom"] += 1
        raw = raw[3:]
    data_lines = 0
    for line, end in _LINE.findall(raw):
        found["crlf_line_ends"] += end == b"\r\n"
        found["cr_line_ends"] += end == b"\r"
        found["line_over_64k"] += len(line) > LINE_LIMIT
        if not line:
            found["multi_line_payload"] += data_lines > 1
            data_lines = 0
        elif line.startswith(b"data:"):
            data_lines += 1
            found["no_space_after_data"] += not line.startswith(b"data: ")
        elif line.startswith(b":"):
            found["comment_pings"] += 1
        elif line.startswith((b"event:", b"id:", b"retry:")):
            found["sse_fields"] += 1
        elif line.startswith(b"error:"):
            found["legacy_error_line"] += 1
    found["missing_done"] += b"[DONE]" not in raw
    return +found  # only what is there


@dataclass(frozen=True, slots=True)
class Reading:
    text: str  # the content the client gets
    failed: bool  # the stream ends in an error
    repairs: Counter[str]
    error: str | None = None  # the server's own message, when it said why


def server_said(status: int, content_type: str, body: bytes) -> str | None:
    """The server's own words in a whole answer that is an error, in any dialect's shape; else None."""
    error = body_error(status, content_type, body)
    return error.message if error is not None else None


def read_as_relay(raw: bytes) -> Reading:
    """A chat stream's raw bytes, read by the relay's own decode-and-repair pipeline."""
    settings = Settings(upstream="http://reading")
    repairer = StreamRepairer(StreamIdentity(Kind.CHAT, "", 0), settings)
    pipeline = Pipeline(repairer, settings.max_event_bytes)
    text: list[str] = []
    payloads, _, failure = pipeline.feed(raw)
    if failure is None and not pipeline.finished:
        more, failure = pipeline.flush()
        payloads += more
    for payload in payloads:
        for choice in orjson.loads(payload).get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
    repairs = +repairer.repairs
    # The relay holds every real usage back and sends it last; only a usage that came
    # before a chunk with choices was out of place, and only then is that a repair.
    del repairs["usage_moved_last"]
    if early := _usage_before_choices(raw):
        repairs["usage_moved_last"] = early
    try:
        if failure is not None:
            raise failure  # the relay stops there too
        pipeline.finish()  # a stream of nothing but other shapes, or no events at all, is an error
    except AdapterError as error:
        said = error.message if isinstance(error, UpstreamReported) else None
        return Reading("".join(text), True, repairs, said)
    return Reading("".join(text), False, repairs)


def _usage_before_choices(raw: bytes) -> int:
    """How many chunks with a real usage a chunk with choices follows."""
    decoder = SSEDecoder()
    early = pending = 0
    for event in decoder.feed(raw) + decoder.flush():
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(chunk, dict):
            continue
        if chunk.get("choices"):
            early, pending = early + pending, 0
        pending += is_real_usage(chunk.get("usage"))
    return early


def no_text(reasoning: str, cut_short: bool) -> str:
    """Why an answer with no text proves nothing: a stream relays cleanly only if text came through."""
    if not reasoning:
        return "the client gets no text: nothing shows the stream relays text"
    why = ": the answer ran out of tokens while thinking" if cut_short else ""
    return f"the client gets reasoning but no text{why}; nothing shows the stream relays text"


def shown_text(text: str, reasoning: str) -> str:
    """The text, or what came instead: reasoning reads as reasoning, not as nothing."""
    if text:
        return repr(text[:60])
    if reasoning:
        return f"no text, only reasoning: {reasoning[:45]!r}"
    return "(nothing)"


def describe(found: Counter[str]) -> list[str]:
    return [f"{LABELS.get(name, name)} ({count})" for name, count in found.items()]


_HEARTBEATS = {Format.RESPONSES: "keepalive", Format.MESSAGES: "ping"}
_FIRST = {
    Format.RESPONSES: ("response.created", "created_not_first"),
    Format.MESSAGES: ("message_start", "start_not_first"),
}


def typed_quirks(raw: bytes, form: Format) -> Counter[str]:
    """What a Responses or Messages body shows that an agent client behind new-api trips on."""
    found: Counter[str] = Counter()
    lines = [line for line, _ in _LINE.findall(raw)]
    limit = Settings(upstream="http://reading").max_line_bytes
    found["line_over_limit"] += sum(len(line) > limit for line in lines)
    typed, found["not_json"] = _typed_events(raw)
    kinds = [kind for kind, _ in typed]
    if _HEARTBEATS[form] not in kinds:
        found["comment_keepalives"] += sum(line.startswith(b":") for line in lines)
    found["no_terminal"] += not set(kinds) & TERMINALS[form]
    first, name = _FIRST[form]
    found[name] += next((kind for kind in kinds if kind != _HEARTBEATS[form]), first) != first
    if form is Format.RESPONSES:
        found["error_event"] += kinds.count("error")
        numbers = [body.get("sequence_number") for _, body in typed]
        found["sequence_gaps"] += sum(
            type(b) is not int or type(a) is not int or b != a + 1 for a, b in itertools.pairwise(numbers)
        )
        ids = {r["id"] for _, body in typed if isinstance(r := body.get("response"), dict) and "id" in r}
        found["response_ids"] += len(ids) if len(ids) > 1 else 0
    else:
        found["error_event_untyped"] += sum(
            kind == "error" and body.get("type") != "error" for kind, body in typed
        )
    return +found


def _typed_events(raw: bytes) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Each event's kind (``error`` when named so, else its ``type``) and JSON
    object; and how many events were no JSON object."""
    decoder = SSEDecoder()
    typed: list[tuple[str, dict[str, Any]]] = []
    not_json = 0
    for event in decoder.feed(raw) + decoder.flush():
        try:
            body = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            not_json += 1
            continue
        kind = body.get("type")
        typed.append(("error" if event.event == "error" else kind if isinstance(kind, str) else "", body))
    return typed, not_json


def _ends_in_failure(raw: bytes, form: Format) -> bool:
    """The body ends in the format's own failure event: nothing for the adapter to add."""
    typed, _ = _typed_events(raw)
    last: tuple[str, dict[str, Any]] | None = next(
        (event for event in reversed(typed) if event[0] != _HEARTBEATS[form]), None
    )
    if last is None:
        return False
    kind, body = last
    if form is Format.RESPONSES:
        return kind == "response.failed"
    return kind == "error" and body.get("type") == "error" and isinstance(body.get("error"), dict)


@dataclass(frozen=True, slots=True)
class TypedReading:
    text: str  # the answer's text as the relay sends it on
    failed: bool  # the stream ends in a failure
    error: str | None  # the server's own message, when it said why
    repairs: Counter[str]


def read_typed(raw: bytes, form: Format) -> TypedReading:
    """A Responses or Messages body, read by the relay's own pipeline and that format's repairer."""
    settings = Settings(upstream="http://reading")
    repairer: StreamFormat = (
        ResponsesRepairer("", settings.max_line_bytes)
        if form is Format.RESPONSES
        else MessagesRepairer(settings.max_line_bytes)
    )
    pipeline = Pipeline(repairer, settings.max_event_bytes)
    units, _, failure = pipeline.feed(raw)
    if failure is None and not pipeline.finished:
        more, failure = pipeline.flush()
        units += more
    error: AdapterError | None = failure
    if error is None:
        try:
            units += pipeline.finish()
        except AdapterError as raised:
            error = raised
    repairs = +repairer.repairs
    del repairs["error_shape"]  # said below, in the format's words
    if error is None and not repairer.saw_usage:
        repairs["usage_missing"] += 1
    elif error is not None and not _ends_in_failure(raw, form):
        repairs["response_failed_added" if form is Format.RESPONSES else "error_event_added"] += 1
    said = error.message if isinstance(error, UpstreamReported) else None
    return TypedReading(_typed_text(units, form), error is not None, said, repairs)


def _typed_text(units: list[bytes], form: Format) -> str:
    decoder = SSEDecoder()
    parts: list[str] = []
    for event in decoder.feed(b"".join(units)):
        body = orjson.loads(event.data)
        if form is Format.RESPONSES and body.get("type") == "response.output_text.delta":
            parts.append(body.get("delta") or "")
        delta = body.get("delta") if body.get("type") == "content_block_delta" else None
        if form is Format.MESSAGES and isinstance(delta, dict) and delta.get("type") == "text_delta":
            parts.append(delta.get("text") or "")
    return "".join(parts)
