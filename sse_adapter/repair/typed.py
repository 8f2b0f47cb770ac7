"""What Responses and Messages streams share (pure): events named for their
JSON ``type``, framed as ``event: <type>`` plus one ``data:`` line.

new-api relays these routes by re-emitting ``event:`` from each data's
``type`` (shared/formats.md), so the adapter frames them the same way.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, ClassVar

import orjson

from sse_adapter.errors import UpstreamDisconnected, UpstreamError, UpstreamReported
from sse_adapter.repair.dialects import excerpt
from sse_adapter.repair.turns import Turns
from sse_adapter.sse.decoder import Event

__all__ = ["PREFIX", "TypedStream", "dumps", "event_object", "event_type", "reported", "typed_frame"]

PREFIX = len(b"data: ")
_SAFE_TYPE = re.compile(r"[\x21-\x7e]{1,200}")  # an event name that cannot break the frame


def event_object(data: str) -> dict[str, Any]:
    """An event's JSON object; anything else is no event of these formats."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    if type(body) is not dict:
        raise UpstreamError(
            f"the upstream sent an event that is not a JSON object: {excerpt(data.encode())!r}"
        )
    return body


def event_type(body: dict[str, Any], name: str) -> str:
    """The event's type: its JSON says it; the ``event:`` line where it does not."""
    kind = body.get("type")
    return kind if isinstance(kind, str) else name


def dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as error:
        raise UpstreamError(f"the upstream's event cannot be sent on as JSON: {error}") from None


def typed_frame(kind: str, payload: bytes) -> bytes:
    """``event: <kind>`` and the payload; a type that could break the frame gets no name."""
    head = _HEADS.get(kind)
    if head is None:
        head = b"event: " + kind.encode() + b"\ndata: " if _SAFE_TYPE.fullmatch(kind) else b"data: "
        if len(_HEADS) < _KNOWN_TYPES:  # a server's types are few; a hostile one's many are not kept
            _HEADS[kind] = head
    return head + payload + b"\n\n"


# The frame head of each event type seen: checked once, not per event.
_HEADS: dict[str, bytes] = {}
_KNOWN_TYPES = 256


def reported(error: object, body: dict[str, Any]) -> UpstreamReported:
    """The upstream's own error object (else the whole event) as our error."""
    found = error if isinstance(error, dict) else body
    message, kind = found.get("message"), found.get("type")
    return UpstreamReported(
        message if isinstance(message, str) and message else excerpt(orjson.dumps(found)),
        upstream_type=kind if isinstance(kind, str) else None,
        upstream_code=found.get("code"),
    )


class TypedStream:
    """What the two typed formats' repairers share: their state, their
    frames (made whole by ``repair``) and what a whole answer ends with."""

    END: ClassVar[str]  # the event that ends a whole answer

    def __init__(self, collect_text: bool) -> None:
        self.finished = False
        self.saw_usage = False
        self.usage: dict[str, Any] | None = None  # the one the stream ended with, in chat's names
        # What the answer generated, for counting it the way its chat equivalent is (tokens.py)
        self.turns: Turns | None = Turns() if collect_text else None
        self.repairs: Counter[str] = Counter()

    def _read(self, event: Event) -> tuple[dict[str, Any], str]:
        """An event's JSON object and type; raises the server's error, in any of its shapes
        (an ``error`` event or type, or OpenAI's ``{"error": ...}`` with no type)."""
        body = event_object(event.data)
        kind = event_type(body, event.event)
        if kind == "error" or event.event == "error" or ("error" in body and "type" not in body):
            self.repairs["error_shape"] += 1
            raise reported(body.get("error"), body)
        return body, kind

    def encode(self, units: list[bytes]) -> bytes:
        return b"".join(units)

    def closing(self) -> bytes:
        return b""  # no [DONE]: the terminal event is the end

    def check_end(self) -> None:
        if not self.finished:
            raise UpstreamDisconnected(
                f"the upstream ended the stream without {self.END}: the answer is incomplete. "
                "Look at the model server's log; send the request again"
            )
