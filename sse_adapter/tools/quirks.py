"""Names what is off in an upstream's raw stream, and what the adapter repairs (pure).

``framing_quirks`` reads the bytes a model server sent and lists the quirks
of shared/upstream-dialects.md it shows. ``read_as_relay`` runs the
adapter's own decode-and-repair pipeline over the same bytes: the text it
yields, whether it ends in an error, and what it changed, so what the demo
and the probe report is what the relay does.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import orjson

from sse_adapter.errors import AdapterError
from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.pipeline import Pipeline
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.settings import Settings
from sse_adapter.tools.oneapi import LINE_LIMIT

__all__ = ["LABELS", "Reading", "describe", "framing_quirks", "read_as_relay"]

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
    "usage_moved_last": "usage sent last",
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
    "model_renamed": "model alias named in the answer",
    "reasoning_in_think_tags": "reasoning put in content inside <think>",
    # requests, as prepared for the upstream
    "stream_usage_asked": "stream usage asked for",
    "stream_options_removed": "`stream_options` removed",
    "request_field_dropped": "request field dropped",
    "model_alias": "model alias applied",
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
    try:
        if failure is not None:
            raise failure  # the relay stops there too
        pipeline.finish()  # a stream of nothing but other shapes, or no events at all, is an error
    except AdapterError:
        return Reading("".join(text), True, +repairer.repairs)
    return Reading("".join(text), False, +repairer.repairs)


def describe(found: Counter[str]) -> list[str]:
    return [f"{LABELS.get(name, name)} ({count})" for name, count in found.items()]
