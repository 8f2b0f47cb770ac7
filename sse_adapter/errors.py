"""The one exception tree of sse-adapter.

Every failure a user can meet is one of these. Each knows the HTTP status it
answers with before a stream has started, and its OpenAI ``type`` and stable
``code``, so the app (before the first byte) and the relay (in-band, after the
200 has gone out) render the same error the same way::

    AdapterError
    ├── EventTooLarge            502  upstream_error / event_too_large
    ├── UpstreamError            502  upstream_error / upstream_error
    │   ├── UpstreamUnreachable  502  upstream_error / upstream_unreachable
    │   ├── UpstreamTimeout      504  upstream_error / upstream_timeout
    │   ├── UpstreamDisconnected 502  upstream_error / upstream_disconnected
    │   └── UpstreamStatus       (the upstream's status)  upstream_error / upstream_status
    └── InternalError            500  adapter_error / internal_error

This module is pure: no I/O, so the codec may raise from it too.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AdapterError(Exception):
    """Base of every error sse-adapter reports to its client."""

    status: ClassVar[int] = 502
    type: ClassVar[str] = "upstream_error"
    code: ClassVar[str] = "adapter_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return self.status

    def to_openai(self) -> dict[str, Any]:
        """The body OpenAI clients and One-API both read: ``{"error": {...}}``."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


class EventTooLarge(AdapterError):
    """An upstream event grew past ``max_event_bytes`` without ending.

    ``completed`` holds the events the same read finished before it, so a
    caller can still deliver them: nothing before the fault is lost.
    """

    code = "event_too_large"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.completed: list[Any] = []


class UpstreamError(AdapterError):
    """The model server failed; the message says which and what to check."""

    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamDisconnected(UpstreamError):
    """The connection ended mid-stream: never to be mistaken for a clean finish."""

    code = "upstream_disconnected"


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status or with no event stream."""

    code = "upstream_status"

    def __init__(self, message: str, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status

    @property
    def http_status(self) -> int:
        return self.upstream_status if 400 <= self.upstream_status <= 599 else 502


class InternalError(AdapterError):
    """A bug in sse-adapter itself, reported rather than hidden."""

    status = 500
    type = "adapter_error"
    code = "internal_error"
