"""What Responses and Messages streams share (pure): events named for their
JSON ``type``, framed as ``event: <type>`` plus one ``data:`` line.

new-api relays these routes by re-emitting ``event:`` from each data's
``type`` (shared/formats.md), so the adapter frames them the same way.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from sse_adapter.errors import UpstreamError, UpstreamReported
from sse_adapter.repair.dialects import excerpt

__all__ = ["PREFIX", "dumps", "event_object", "event_type", "reported", "typed_frame"]

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
    if _SAFE_TYPE.fullmatch(kind) is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


def reported(error: object, body: dict[str, Any]) -> UpstreamReported:
    """The upstream's own error object (else the whole event) as our error."""
    found = error if isinstance(error, dict) else body
    message, kind = found.get("message"), found.get("type")
    return UpstreamReported(
        message if isinstance(message, str) and message else excerpt(orjson.dumps(found)),
        upstream_type=kind if isinstance(kind, str) else None,
        upstream_code=found.get("code"),
    )
