"""Keeps every line under One-API's scanner limit (pure).

One-API reads the stream with a Go scanner whose lines stop at 64 KiB; one
longer line ends the stream for the user (shared/oneapi-relay.md). A chunk
too long is first stripped of the bulky fields no client reads, then its
text (content, reasoning, tool-call arguments) is split over consecutive
chunks, unchanged when joined. What still cannot fit is an error, never a
silent cut.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from sse_adapter.errors import AdapterError, InternalError, LineTooLong, UpstreamError
from sse_adapter.repair.dialects import BULKY_FIELDS

__all__ = ["fit", "pieces", "serialised"]

_PREFIX = len(b"data: ")
_CHAT_TEXT = ("reasoning_content", "reasoning", "content")
_LEAST_ROOM = 64  # bytes of text a split chunk must carry to be worth it


def fit(chunk: dict[str, Any], limit: int, repairs: Counter[str], sent: str | None = None) -> list[bytes]:
    """The chunk as one or more payloads whose ``data: `` lines fit ``limit`` bytes.

    ``sent``: the upstream's payload the chunk was repaired from; None for a
    chunk the adapter made. What cannot be split is blamed on whoever made it long.
    """
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
        raise _too_long(len(payload), limit, sent)
    repairs["long_line_split"] += 1
    return payloads


def _too_long(size: int, limit: int, sent: str | None) -> AdapterError:
    what = f"to fit One-API's line limit of {limit} bytes (--max-line-bytes); only content, reasoning and "
    what += "tool calls can be split"
    upstream = None if sent is None else len(sent.encode())
    if upstream is not None and _PREFIX + upstream > limit:
        return LineTooLong(f"the upstream sent a chunk of {upstream} bytes that cannot be split {what}")
    # The upstream's line fit (or there was none): the adapter's own repairs
    # made it too long, which is no fault of the upstream's.
    if upstream is None:
        return InternalError(f"sse-adapter made a chunk of {size} bytes that it cannot split {what}")
    return InternalError(
        f"sse-adapter's repairs grew the upstream's chunk of {upstream} bytes to {size} bytes, "
        f"which it cannot split {what}"
    )


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
    if isinstance(delta, dict):
        return _split_chat(chunk, choice, delta, limit)
    if not _text(choice.get("text")):
        return None
    text, choice["text"] = choice["text"], ""
    room = limit - _PREFIX - _longest(chunk, choice)
    if room < _LEAST_ROOM:
        return None
    return _payloads(chunk, choice, [{"text": piece} for piece in pieces(text, room)], choice.update)


def _split_chat(
    chunk: dict[str, Any], choice: dict[str, Any], delta: dict[str, Any], limit: int
) -> list[bytes] | None:
    texts = [(name, delta.pop(name)) for name in _CHAT_TEXT if _text(delta.get(name))]
    calls = delta.pop("tool_calls") if isinstance(delta.get("tool_calls"), list) else []
    if not texts and len(calls) < 2 and not _with_arguments(calls):
        return None
    # What the delta says besides its text and calls (its role, say) is said
    # once, first; every part is measured with it, to be sure.
    room = limit - _PREFIX
    parts: list[dict[str, Any]] = []
    for name, text in texts:
        space = room - _measured(chunk, choice, {**delta, name: ""})
        if space < _LEAST_ROOM:
            return None
        parts += [{name: piece} for piece in pieces(text, space)]
    groups = _call_groups(chunk, choice, delta, calls, room)
    if groups is None:
        return None
    parts += groups
    parts[0] = delta | parts[0]
    return _payloads(chunk, choice, parts, lambda part: choice.__setitem__("delta", part))


def _call_groups(
    chunk: dict[str, Any], choice: dict[str, Any], others: dict[str, Any], calls: list[Any], room: int
) -> list[dict[str, Any]] | None:
    """The calls as few deltas as fit: calls side by side, long arguments in pieces."""
    empty = _measured(chunk, choice, {**others, "tool_calls": []})
    groups: list[list[Any]] = []
    size = room  # of the group being filled: none yet
    for call in calls:
        arguments = _arguments(call)
        head = {**call, "function": {**call["function"], "arguments": ""}} if arguments else call
        space = room - _measured(chunk, choice, {**others, "tool_calls": [head]})
        if arguments and space < _LEAST_ROOM:
            return None
        for number, part in enumerate(_call_parts(call, arguments, space)):
            added = len(orjson.dumps(part)) + 1  # and a comma
            if empty + added - 1 > room:
                return None  # a call that fits in no line: a name too long, say
            if number or size + added > room:  # never two pieces of one call in one delta
                groups.append([])
                size = empty - 1
            groups[-1].append(part)
            size += added
    return [{"tool_calls": group} for group in groups]


def _measured(chunk: dict[str, Any], choice: dict[str, Any], delta: dict[str, Any]) -> int:
    """The chunk's size with ``delta``."""
    choice["delta"] = delta
    return _longest(chunk, choice)


def _payloads(
    chunk: dict[str, Any],
    choice: dict[str, Any],
    parts: list[dict[str, Any]],
    put: Callable[[dict[str, Any]], None],
) -> list[bytes]:
    """The chunk once per part, the upstream's finish reason on the last only."""
    finish = choice.get("finish_reason")
    payloads = []
    for number, part in enumerate(parts, 1):
        put(part)
        choice["finish_reason"] = finish if number == len(parts) else None
        payloads.append(orjson.dumps(chunk))
    return payloads


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _with_arguments(calls: list[Any]) -> bool:
    return any(_arguments(call) for call in calls)


def _arguments(call: Any) -> str | None:
    """A tool call's argument text, if it has any."""
    function = call.get("function") if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    return arguments if _text(arguments) else None


def _longest(chunk: dict[str, Any], choice: dict[str, Any]) -> int:
    """The chunk's size with the longer of its two finish reasons: the last
    piece carries the real one, every other piece null, and either may be the longer."""
    finish = choice.get("finish_reason")
    choice["finish_reason"] = None
    without = len(orjson.dumps(chunk))
    choice["finish_reason"] = finish
    return max(without, len(serialised(chunk)))


def _call_parts(call: Any, arguments: str | None, room: int) -> list[Any]:
    """A tool call as deltas' calls, one per piece of its arguments: the first
    says who the call is, the others carry only what names it and their piece."""
    if arguments is None:
        return [call]
    which = {key: call[key] for key in ("index",) if key in call} or {"id": call.get("id")}
    parts: list[dict[str, Any]] = []
    for piece in pieces(arguments, room):
        head = which if parts else call
        parts.append({**head, "function": {**head.get("function", {}), "arguments": piece}})
    return parts


def pieces(text: str, room: int) -> Iterator[str]:
    """Consecutive slices of ``text`` whose JSON string bodies take at most ``room`` bytes."""
    start = 0
    while start < len(text):
        size = min(len(text) - start, room)
        while (used := len(orjson.dumps(text[start : start + size])) - 2) > room:
            size = max(1, min(size - 1, size * room // used))
        yield text[start : start + size]
        start += size
