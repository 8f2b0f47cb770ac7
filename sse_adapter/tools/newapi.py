"""new-api's pass-through of Responses and Messages streams, as a pure function of the bytes it reads.

A model of how QuantumNous/new-api relays ``/v1/responses`` and
``/v1/messages`` to a channel that speaks them (shared/formats.md;
shared/oneapi-relay.md, "new-api in 2026"): its scanner reads LF-ended
lines, takes each ``data:`` line (a space after the colon or not) as one
JSON object and writes it on behind an ``event:`` line named for the
object's ``type``. Comments and the upstream's own ``event:``, ``id:`` and
``retry:`` lines are dropped. A data line that is not a JSON object ends
the relay: its handler fails there, and the client's stream just stops.
Its lines may be megabytes long: no 64 KiB limit as in One-API.

``probe`` and ``demo`` read these routes through it, as :mod:`.oneapi` does
for chat: what it sends on is what an agent client behind new-api gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["NewAPIRelay", "nonstream_error"]

_DATA = b"data:"


@dataclass
class NewAPIRelay:
    """Feed it the upstream's bytes as they come; it returns the frames new-api sends on."""

    stopped: bool = False  # a data line that is no JSON object ended the relay
    dropped: list[bytes] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        if self.stopped:
            return []
        self._buffer += data
        rendered: list[bytes] = []
        while not self.stopped and (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._line(line.removesuffix(b"\r"), rendered)
        return rendered

    def close(self) -> list[bytes]:
        """The end of the upstream body: the last unterminated line, and nothing of new-api's own."""
        rendered: list[bytes] = []
        if self._buffer and not self.stopped:
            self._line(bytes(self._buffer).removesuffix(b"\r"), rendered)
        self._buffer.clear()
        return rendered

    def _line(self, line: bytes, rendered: list[bytes]) -> None:
        if not line.startswith(_DATA):
            if line:
                self.dropped.append(line)
            return
        payload = line[len(_DATA) :].lstrip(b" ")
        if payload.startswith(b"[DONE]"):
            self.stopped = True  # not of these formats: the scanner stops on it
            return
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self.stopped = True
            return
        kind = body.get("type")
        name = kind.encode() if isinstance(kind, str) else b""
        rendered.append(b"event: " + name + b"\ndata: " + payload + b"\n\n")


def nonstream_error(status: int, body: bytes, key: str) -> str | None:
    """What new-api makes of a whole answer: None when it relays it, else why
    not. ``key`` is the list a good answer holds its output in: ``output``
    (Responses) or ``content`` (Messages)."""
    if status != 200:
        return f"status {status}"
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the body is not JSON"
    if not isinstance(parsed, dict):
        return "the body is not a JSON object"
    error = parsed.get("error")
    if isinstance(error, dict) and (error.get("type") or error.get("message")):
        return str(error.get("message") or error["type"])
    if not isinstance(parsed.get(key), list):
        return f"no `{key}` list in the answer"
    return None
