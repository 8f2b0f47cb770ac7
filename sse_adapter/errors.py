"""The one exception tree of sse-adapter.

Every failure a user can meet is one of these. Each knows the HTTP status it
answers with before a stream has started, and its OpenAI ``type`` and stable
``code``, so the app (before the first byte) and the relay (in-band, after the
200 has gone out) render the same error the same way::

    AdapterError
    ├── ClientError              400  invalid_request_error / invalid_request
    │   ├── InvalidJSON          400  invalid_request_error / invalid_json
    │   ├── InvalidPath          400  invalid_request_error / invalid_path
    │   ├── Unauthorized         401  invalid_request_error / invalid_api_key
    │   ├── RequestTimeout       408  invalid_request_error / request_timeout
    │   ├── RequestTooLarge      413  invalid_request_error / request_too_large
    │   ├── HeadersTooLarge      431  invalid_request_error / request_headers_too_large
    │   ├── TooManyStreams       429  rate_limit_error / too_many_streams
    │   └── TooManyConnections   503  rate_limit_error / too_many_connections
    ├── EventTooLarge            502  upstream_error / event_too_large
    ├── LineTooLong              502  upstream_error / line_too_long
    ├── UpstreamError            502  upstream_error / upstream_error
    │   ├── UpstreamUnreachable  502  upstream_error / upstream_unreachable
    │   ├── UpstreamTimeout      504  upstream_error / upstream_timeout
    │   ├── UpstreamDisconnected 502  upstream_error / upstream_disconnected
    │   ├── NotAnEventStream     502  upstream_error / not_an_event_stream
    │   ├── EmptyStream          502  upstream_error / empty_stream
    │   ├── ResponseTooLarge     502  upstream_error / response_too_large
    │   └── UpstreamReported     the upstream's own status, type and code
    ├── ShuttingDown             503  adapter_error / shutting_down
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

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # What only sse-adapter's log shows: the upstream's address, a library's
        # own words. A client is told what failed and what to do, never our insides.
        self.detail = detail

    @property
    def http_status(self) -> int:
        return self.status

    def to_openai(self) -> dict[str, Any]:
        """The body OpenAI clients and One-API both read: ``{"error": {...}}``."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    @property
    def anthropic_type(self) -> str:
        """Anthropic's error type for this error's status (shared/formats.md)."""
        status = self.http_status
        return _ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")

    def to_anthropic(self) -> dict[str, Any]:
        """The body Anthropic clients read: ``{"type": "error", "error": {...}}``."""
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}


# Anthropic's error types by status; what a Messages client acts on.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "request_too_large",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ANTHROPIC_TYPES = frozenset(_ANTHROPIC_TYPES.values())


class ClientError(AdapterError):
    """The request itself cannot be served; the client must change it."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(ClientError):
    code = "invalid_json"


class InvalidPath(ClientError):
    """A request target that leaves ``/v1/`` once decoded, or holds control characters."""

    code = "invalid_path"


class Unauthorized(ClientError):
    status = 401
    code = "invalid_api_key"


class RequestTimeout(ClientError):
    """The request's head or body did not arrive within --request-read-timeout."""

    status = 408
    code = "request_timeout"


class RequestTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class HeadersTooLarge(ClientError):
    """More request headers, or more header bytes, than --max-header-count / --max-header-bytes."""

    status = 431
    code = "request_headers_too_large"


class TooManyStreams(ClientError):
    """Past --max-concurrent-streams; One-API retries a 429 on another channel."""

    status = 429
    type = "rate_limit_error"
    code = "too_many_streams"


class TooManyConnections(ClientError):
    """Past --max-connections: the client should come back shortly."""

    status = 503
    type = "rate_limit_error"
    code = "too_many_connections"


class EventTooLarge(AdapterError):
    """An upstream event grew past ``max_event_bytes`` without ending.

    ``completed`` holds the events the same read finished before it, so a
    caller can still deliver them: nothing before the fault is lost.
    """

    code = "event_too_large"

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message, detail)
        self.completed: list[Any] = []


class LineTooLong(AdapterError):
    """A chunk that cannot be put in a line One-API can read, even split."""

    code = "line_too_long"


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


class NotAnEventStream(UpstreamError):
    """A streaming request answered with a success status but no event stream."""

    code = "not_an_event_stream"


class EmptyStream(UpstreamError):
    """A stream that ended without a single event."""

    code = "empty_stream"


class ResponseTooLarge(UpstreamError):
    code = "response_too_large"


class UpstreamReported(UpstreamError):
    """An error the model server reported itself: an error status, an error
    body or an error chunk. Its own message, type and code are kept."""

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        upstream_type: str | None = None,
        upstream_code: object = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = status
        self.upstream_type = upstream_type
        self.upstream_code = upstream_code
        self.extra = extra or {}  # the server's other fields, llama.cpp's n_ctx say: sent on beside ours

    @property
    def http_status(self) -> int:
        """The upstream's error status; else its code, when that is one; else 502."""
        for candidate in (self.upstream_status, self.upstream_code):
            if isinstance(candidate, int) and 400 <= candidate <= 599:
                return candidate
        return self.status

    @property
    def anthropic_type(self) -> str:
        """The server's own Anthropic type when it gave one, else the status's."""
        if self.upstream_type is not None and self.upstream_type in ANTHROPIC_TYPES:
            return self.upstream_type
        return super().anthropic_type

    def to_openai(self) -> dict[str, Any]:
        code = self.upstream_code if self.upstream_code not in (None, "") else self.upstream_status
        return {
            "error": {
                **self.extra,
                "message": self.message,
                "type": self.upstream_type or self.type,
                "code": code if code is not None else self.code,
            }
        }


class ShuttingDown(AdapterError):
    """The adapter is stopping and its grace period ran out before the answer did."""

    status = 503
    type = "adapter_error"
    code = "shutting_down"


class InternalError(AdapterError):
    """A bug in sse-adapter itself, reported rather than hidden."""

    status = 500
    type = "adapter_error"
    code = "internal_error"
