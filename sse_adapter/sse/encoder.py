"""Server-sent events frames in the one form One-API relays intact (sans-I/O).

One-API forwards only lines that start with exactly ``data: `` and end in LF,
and takes each line as a whole event (shared/oneapi-relay.md), so every event
leaves as a single ``data: <payload>\\n\\n`` frame.
"""

from __future__ import annotations

__all__ = ["DONE", "comment", "frame", "frames"]

DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    """``data: <payload>`` plus the blank line that dispatches it.

    A payload that holds a line break would become several lines, which
    One-API would read as several broken events: refuse it here, so no caller
    can put one on the wire by mistake.
    """
    if b"\n" in payload or b"\r" in payload:
        raise ValueError("an SSE payload sent to One-API must be a single line")
    return b"data: " + payload + b"\n\n"


def frames(payloads: list[bytes]) -> bytes:
    """The frames of several payloads, as one write: what one upstream read completes.

    Unlike :func:`frame` it does not look for line breaks, for it runs per
    event: its payloads are single lines by construction, either a line the
    decoder split off (it splits on CR and LF) or orjson's output (which
    escapes both).
    """
    if not payloads:
        return b""
    return b"data: " + b"\n\ndata: ".join(payloads) + b"\n\n"


def comment(text: str) -> bytes:
    """A comment frame: keeps a hop alive, never reaches One-API's client."""
    if "\n" in text or "\r" in text:
        raise ValueError("an SSE comment must be a single line")
    return b": " + text.encode() + b"\n\n"
