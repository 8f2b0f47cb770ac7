"""What model servers really send, turned into what One-API relays (pure).

The quirks handled here are listed in shared/upstream-dialects.md. Every
repair is counted by kind, so the operator can see what the upstream needed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from sse_adapter.chunks import StreamIdentity
from sse_adapter.decoder import Event
from sse_adapter.errors import UpstreamError

__all__ = ["RequestFields", "StreamRepairer", "error_message"]

_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class RequestFields:
    """The two request fields the relay needs; the body itself goes upstream untouched."""

    stream: bool
    model: str

    @classmethod
    def parse(cls, body: bytes) -> RequestFields:
        try:
            fields = orjson.loads(body)
        except orjson.JSONDecodeError:
            fields = None  # the upstream will answer it with its own error
        if not isinstance(fields, dict):
            return cls(stream=False, model="")
        model = fields.get("model")
        return cls(stream=fields.get("stream") is True, model=model if isinstance(model, str) else "")


class StreamRepairer:
    """Turns each upstream event into the payloads to send, in order.

    ``finished`` turns true at the upstream's ``[DONE]``: the relay stops
    reading there and writes the one ``[DONE]`` of the stream itself.
    """

    def __init__(self, identity: StreamIdentity) -> None:
        self.identity = identity
        self.finished = False
        self.repairs: Counter[str] = Counter()

    def repair(self, event: Event) -> list[bytes]:
        data = event.data
        if data.strip() == "[DONE]":
            self.finished = True
            return []
        chunk = _json_object(data)
        return [self._chunk(chunk, multi_line="\n" in data) or data.encode()]

    def _chunk(self, chunk: dict[str, Any], multi_line: bool) -> bytes | None:
        """The re-serialised chunk, or None when the upstream's bytes can go as they are."""
        upstream_id = chunk.get("id")
        stream_id = self.identity.claim(upstream_id)
        changed = upstream_id != stream_id
        if changed:
            chunk["id"] = stream_id
            self.repairs["id_unified"] += 1
        if multi_line:
            self.repairs["multi_line_payload"] += 1
        return orjson.dumps(chunk) if changed or multi_line else None


def _json_object(data: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        raise UpstreamError(
            f"the upstream sent an event that is not a JSON object: {data[:_EXCERPT]!r}; "
            "check that --upstream points at an OpenAI-compatible endpoint"
        )
    return chunk


def error_message(body: bytes) -> str:
    """The upstream's own words from an error body, whatever its shape."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail", "msg", "text"):
            found = _message_in(parsed.get(key))
            if found:
                return found
    text = body.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:_EXCERPT] or "(empty body)"


def _message_in(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _message_in(value.get("message"))
    return ""
