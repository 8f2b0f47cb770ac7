"""What model servers really send (pure): their error shapes and vocabularies.

The shapes are those of shared/upstream-dialects.md. Whatever the server,
an error comes out as one :class:`UpstreamReported` with the server's own
message, type and code.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from sse_adapter.errors import AdapterError, UpstreamReported
from sse_adapter.repair.usage import Verdict, usage_verdict

__all__ = [
    "BULKY_FIELDS",
    "OPENAI_FINISH_REASONS",
    "STOP_ALIASES",
    "body_error",
    "chunk_error",
    "event_error",
    "excerpt",
    "is_context_overflow",
    "is_overloaded",
    "is_real_usage",
    "json_or_none",
]

OPENAI_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# TGI's own names for a natural stop, and the empty string it sometimes sends
STOP_ALIASES = frozenset({"stop_sequence", "eos_token", ""})
# Large fields no OpenAI client reads: llama.cpp's timings, vLLM's token ids,
# Ollama's context array. Dropped only when a line would be too long for One-API.
BULKY_FIELDS = ("timings", "prompt_token_ids", "token_ids", "context", "prompt_progress")

_EXCERPT = 300
_OURS = frozenset({"message", "msg", "type", "code"})  # the fields an error's own answer sets
# [^<>]: a match stops at the next "<", so a page of "<" costs n, not n squared
_TAGS = re.compile(rb"<[^<>]*>")


def chunk_error(chunk: dict[str, Any], status: int | None = None) -> UpstreamReported | None:
    """The error a JSON payload reports, in any shape of the dialect table, or None."""
    error = chunk.get("error")
    if isinstance(error, dict) and error:
        # OpenAI, vLLM, SGLang, llama.cpp, LocalAI; TGI >= 2.4.1 says http_status_code
        code = error.get("code", error.get("http_status_code"))
        message = _text(error.get("message")) or _text(error.get("msg")) or excerpt(orjson.dumps(error))
        kind = _text(error.get("type"))
        extra = {name: value for name, value in error.items() if name not in _OURS}
        return UpstreamReported(message, status=status, upstream_type=kind, upstream_code=code, extra=extra)
    if isinstance(error, str) and error:  # TGI <= 2.x, Xinference, Ollama
        return UpstreamReported(error, status=status, upstream_type=_text(chunk.get("error_type")))
    code = chunk.get("error_code")
    if code:  # FastChat: {"text": ..., "error_code": 50001}
        message = _text(chunk.get("text")) or f"error code {code}"
        return UpstreamReported(message, status=status, upstream_code=code)
    return None


def event_error(data: str) -> UpstreamReported:
    """An event the upstream marked as an error: llama.cpp's legacy ``error:``
    line, or ``event: error``. Its data is the error object itself."""
    parsed = json_or_none(data.encode())
    if isinstance(parsed, dict):
        found = chunk_error(parsed) or chunk_error({"error": parsed})
        if found is not None:
            return found
    return UpstreamReported(excerpt(data.encode()))


def body_error(status: int, content_type: str, body: bytes, server: str = "") -> UpstreamReported | None:
    """The error a whole response body stands for; None for a 2xx body that is no error."""
    parsed = json_or_none(body)
    found = chunk_error(parsed, status) if isinstance(parsed, dict) else None
    if found is not None or 200 <= status < 300:
        return found
    if isinstance(parsed, dict):
        for key in ("message", "detail", "msg"):
            if message := _text(parsed.get(key)):
                return UpstreamReported(message, status=status, upstream_type=_text(parsed.get("type")))
    return UpstreamReported(_describe(status, content_type, body, server), status=status)


# What servers say when the prompt does not fit (vLLM, SGLang, llama-server, Ollama, TGI, LM Studio).
_CONTEXT = re.compile(
    r"context length|context size|context window|context_length_exceeded|exceed_context_size"
    r"|prompt is too long|prompt too long|input length exceeds|maximum context|too many tokens"
    r"|tokens \+ `max_new_tokens` must be",
    re.IGNORECASE,
)
# ... and when it is full: a queue, its slots, its capacity.
_OVERLOADED = re.compile(
    r"overloaded|queue is full|queue full|server is busy|no slot|at capacity|too many requests",
    re.IGNORECASE,
)
_FULL_STATUSES = frozenset({429, 503, 529})


def is_context_overflow(error: AdapterError) -> bool:
    """The request's prompt is longer than the model's context: sending it again cannot help."""
    code = error.upstream_code if isinstance(error, UpstreamReported) else None
    return code == "context_length_exceeded" or bool(_CONTEXT.search(error.message))


def is_overloaded(error: AdapterError) -> bool:
    """The server (or the adapter) is full for now: the client should wait, then retry."""
    if error.http_status in _FULL_STATUSES:
        return True
    kind = error.upstream_type if isinstance(error, UpstreamReported) else None
    return kind in ("overloaded_error", "rate_limit_error") or bool(_OVERLOADED.search(error.message))


def is_real_usage(usage: object) -> bool:
    """Usage that is the server's count: not null, zeros or a placeholder
    (:func:`~sse_adapter.repair.usage.usage_verdict`)."""
    return usage_verdict(usage) is Verdict.REAL


def _describe(status: int, content_type: str, body: bytes, server: str = "") -> str:
    if "html" in content_type.lower() or body.lstrip().startswith(b"<"):
        text = excerpt(_TAGS.sub(b" ", body))
        return f"{text} (an HTML page: a proxy in front of the model server answered, not the server)"
    if body.strip():
        return excerpt(body)
    who = f" ({' '.join(server.split())[:80]})" if server.strip() else ""
    return (
        f"the model server{who} answered HTTP {status} with an empty body, so it did not say why; "
        "its own log does (llama-cpp-python, for one, answers 400 this way to a request it cannot parse)"
    )


def excerpt(raw: bytes) -> str:
    """Some bytes of a body, on one line, short enough for an error message.
    Only its start is read: a body may be megabytes (whitespace past the start
    can hide the rest; the message stays short all the same)."""
    text = " ".join(raw[: _EXCERPT * 64].decode("utf-8", "replace").split())
    cut = len(text) > _EXCERPT or len(raw) > _EXCERPT * 64
    return text[:_EXCERPT] + "..." if cut else text


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def json_or_none(raw: bytes) -> object:
    """The JSON a body holds, or None for one that is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
