"""Keeps every line under One-API's scanner limit (pure).

One-API reads the stream with a Go scanner whose lines stop at 64 KiB; one
longer line ends the stream for the user (shared/oneapi-relay.md). A chunk
too long is first stripped of the bulky fields no client reads, then its
text is split over consecutive chunks, unchanged when joined. What still
cannot fit is an error, never a silent cut.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from sse_adapter.dialects import BULKY_FIELDS
from sse_adapter.errors import LineTooLong, UpstreamError

__all__ = ["fit", "serialised"]

_PREFIX = len(b"data: ")
_CHAT_TEXT = ("reasoning_content", "reasoning", "content")
_LEAST_ROOM = 64  # bytes of text a split chunk must carry to be worth it


def fit(chunk: dict[str, Any], limit: int, repairs: Counter[str]) -> list[bytes]:
    """The chunk as one or more payloads whose ``data: `` lines fit ``limit`` bytes."""
    payload = serialised(chunk)
    if _PREFIX + len(payload) <= limit:
        return [payload]
    if _drop_bulky(chunk):
        repairs["bulky_field_dropped"] += 1
        payload = serialised(chunk)
        if _PREFIX + len(payload) <= limit:
            return [payload]
    payloads = _split_text(chunk, limit)
    if payloads is None:
        raise LineTooLong(
            f"the upstream sent a chunk of {len(payload)} bytes that cannot be split to fit One-API's "
            f"line limit of {limit} bytes (--max-line-bytes); only content and reasoning text can be split"
        )
    repairs["long_line_split"] += 1
    return payloads


def serialised(body: dict[str, Any]) -> bytes:
    """The JSON of a repaired chunk or body; an upstream error if it holds
    what JSON cannot carry on (orjson refuses integers past 64 bits)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as error:
        raise UpstreamError(f"the upstream's answer cannot be sent on as JSON: {error}") from None


def _drop_bulky(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices")
    holders = [chunk, *(c for c in choices if isinstance(c, dict))] if isinstance(choices, list) else [chunk]
    dropped = [holder.pop(name) for holder in holders for name in BULKY_FIELDS if name in holder]
    return bool(dropped)


def _split_text(chunk: dict[str, Any], limit: int) -> list[bytes] | None:
    choices = chunk.get("choices")
    if not (isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict)):
        return None
    choice = choices[0]
    delta = choice.get("delta")
    holder, names = (delta, _CHAT_TEXT) if isinstance(delta, dict) else (choice, ("text",))
    texts = [(name, holder[name]) for name in names if isinstance(holder.get(name), str) and holder[name]]
    if not texts:
        return None
    for name, _ in texts:
        holder[name] = ""
    # Measured with the longer of the two finish reasons: the last piece carries the
    # real one, every other piece null, and either may be the longer.
    finish = choice.get("finish_reason")
    choice["finish_reason"] = None
    without = len(orjson.dumps(chunk))
    choice["finish_reason"] = finish
    room = limit - _PREFIX - max(without, len(serialised(chunk)))
    if room < _LEAST_ROOM:
        return None
    pieces = [(name, piece) for name, text in texts for piece in _pieces(text, room)]
    payloads = []
    for number, (name, piece) in enumerate(pieces, 1):
        for other, _ in texts:
            holder[other] = ""
        holder[name] = piece
        choice["finish_reason"] = finish if number == len(pieces) else None
        payloads.append(orjson.dumps(chunk))
    return payloads


def _pieces(text: str, room: int) -> Iterator[str]:
    """Consecutive slices of ``text`` whose JSON string bodies take at most ``room`` bytes."""
    start = 0
    while start < len(text):
        size = min(len(text) - start, room)
        while (used := len(orjson.dumps(text[start : start + size])) - 2) > room:
            size = max(1, min(size - 1, size * room // used))
        yield text[start : start + size]
        start += size
