"""A JSON object's top-level fields, read and edited without parsing the rest (pure).

A request body may hold megabytes of messages. Parsed into Python objects it
takes 5 to 40 times its size (a list of small numbers: a pointer and more per
two bytes), and the adapter reads and writes only a few top-level fields. So
the body is split into its members, each value kept as a span of the client's
bytes (``msgspec.Raw``: no copy); msgspec checks the whole document's syntax as
it skips over each value, and the UTF-8 is checked a slice at a time. Only the
values the adapter reads are parsed, and an edited body is written from the
spans: memory stays within about twice the body, in time linear in it.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import msgspec
import orjson

from sse_adapter.errors import InvalidJSON
from sse_adapter.repair.dialects import excerpt

__all__ = ["Members", "parse_lenient"]

_DECODER = msgspec.json.Decoder(dict[str, msgspec.Raw])
_SLICE = 1 << 20  # bytes of UTF-8 checked at a time: the text made of one slice is dropped at once
_ABSENT = object()
_EMPTY_ARRAY = re.compile(rb"\[[ \t\r\n]*\]")  # JSON's whitespace only


class Members:
    """The top-level members of a JSON object body, in order; the last of a
    duplicated name wins, as it does for orjson and json."""

    __slots__ = ("_body", "_members", "edited")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._members: dict[str, msgspec.Raw | bytes] = _split(body)
        self.edited = False

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def is_true(self, name: str) -> bool:
        """Whether the value is ``true``, read without parsing it."""
        value = self._members.get(name)
        return value is not None and len(memoryview(value)) == 4 and bytes(value) == b"true"

    def is_null(self, name: str) -> bool:
        """Whether the value is ``null``, read without parsing it."""
        value = self._members.get(name)
        return value is not None and len(memoryview(value)) == 4 and bytes(value) == b"null"

    def get(self, name: str, default: Any = None) -> Any:
        """The value parsed (only this one), or ``default`` when it is absent.
        A value orjson cannot hold (a number past a double) reads as absent."""
        value = self._members.get(name)
        if value is None:
            return default
        try:
            return orjson.loads(memoryview(value))
        except orjson.JSONDecodeError:
            return default

    def is_nonempty_array(self, name: str) -> bool:
        """Whether the value is an array with an element, read without parsing it."""
        value = self._members.get(name)
        if value is None:
            return False
        # the span is the value alone, without the whitespace around it
        view = memoryview(value)
        return view[:1].tobytes() == b"[" and _EMPTY_ARRAY.fullmatch(view) is None

    def set(self, name: str, value: Any) -> None:
        self._members[name] = orjson.dumps(value)
        self.edited = True

    def pop(self, name: str) -> bool:
        """Remove the member; whether there was one."""
        if self._members.pop(name, _ABSENT) is _ABSENT:
            return False
        self.edited = True
        return True

    def encoded(self) -> bytes:
        """The body: the client's own bytes when nothing was edited, else
        written anew from the spans (the values byte for byte)."""
        if not self.edited:
            return self._body
        parts: list[bytes | msgspec.Raw] = [b"{"]
        for name, value in self._members.items():
            parts += (orjson.dumps(name), b":", value, b",")
        parts[-1] = b"}"  # the last comma, or the brace opened
        return b"{}" if len(parts) == 1 else b"".join(parts)


def _split(body: bytes) -> dict[str, msgspec.Raw | bytes]:
    members: dict[str, msgspec.Raw | bytes] | None
    try:
        members = dict(_DECODER.decode(body))
    except (msgspec.DecodeError, RecursionError):
        members = None
    if members is None or not _utf8(body):
        raise InvalidJSON(f"the request body is not a JSON object: {excerpt(body)!r}")
    return members


def _utf8(body: bytes) -> bool:
    """Whether the body is UTF-8, checked a slice at a time: decoded whole, one
    character past U+FFFF would make a text four times the body's size."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    try:
        for start in range(0, len(view), _SLICE):
            decoder.decode(view[start : start + _SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def parse_lenient(body: bytes) -> dict[str, Any]:
    """The whole body parsed, for the rare paths that read all of it (a
    refusal's echo check, counting tokens); ``{}`` for one orjson cannot hold."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
