"""Who may use the adapter, how big a request's head may be, and the id
every request carries (ASGI middleware).

Plain ASGI rather than a BaseHTTPMiddleware, which would buffer and break
streaming responses.
"""

from __future__ import annotations

import hmac
import re
import uuid

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sse_adapter.errors import AdapterError, HeadersTooLarge, InvalidPath, Unauthorized
from sse_adapter.proxy.upstream import is_messages_path, upstream_path

__all__ = ["Guard"]

_REQUEST_ID = b"x-request-id"
_SAFE_ID = re.compile(rb"[\x21-\x7e]{1,200}")  # printable, no spaces: safe to log and to pass on


class Guard:
    def __init__(
        self, app: ASGIApp, api_keys: tuple[str, ...], max_header_count: int, max_header_bytes: int
    ) -> None:
        self.app = app
        self.api_keys = tuple(key.encode() for key in api_keys)
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(name, value) for name, value in scope["headers"] if name != _REQUEST_ID]
        given = next((value for name, value in scope["headers"] if name == _REQUEST_ID), b"")
        request_id = given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex.encode()
        scope = {**scope, "headers": [*headers, (_REQUEST_ID, request_id)]}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (_REQUEST_ID, request_id)]}
            await send(message)

        refusal = self._refusal(scope, headers)
        if refusal is not None:
            error, extra = refusal
            body = error.to_anthropic() if is_messages_path(scope["path"]) else error.to_openai()
            reply = JSONResponse(body, status_code=error.http_status, headers=extra)
            await reply(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)

    def _refusal(
        self, scope: Scope, headers: list[tuple[bytes, bytes]]
    ) -> tuple[AdapterError, dict[str, str] | None] | None:
        """Why a request is turned away before anything reads it, or None."""
        path: str = scope["path"]
        size = sum(len(name) + len(value) for name, value in headers)
        if len(headers) > self.max_header_count or size > self.max_header_bytes:
            # caught before any header is looked at one by one: each such pass would cost as much again
            return HeadersTooLarge(
                f"the request carries {len(headers)} headers ({size} bytes); sse-adapter takes at most "
                f"{self.max_header_count} headers and {self.max_header_bytes} bytes of them "
                "(--max-header-count, --max-header-bytes): send fewer"
            ), None
        if path.startswith("/v1/"):
            try:  # before routing: a path that only leaves /v1/ once decoded still routes as /v1/
                upstream_path(scope.get("raw_path") or path.encode())
            except InvalidPath as error:
                return error, None
        if self.api_keys and path.startswith("/v1/") and not self._authorised(headers):
            return Unauthorized(
                "missing or wrong API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>') "
                "with one of the adapter's --api-key values (in One-API or new-api, the channel's key)"
            ), {"WWW-Authenticate": "Bearer"}
        return None

    def _authorised(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """``Authorization: Bearer <key>`` (OpenAI's clients) or ``x-api-key`` (Anthropic's)."""
        value = next((value for name, value in headers if name == b"authorization"), b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            token = next((value for name, value in headers if name == b"x-api-key"), b"")
            if not token:
                return False
        # every key is compared, each in constant time: the time taken tells nothing
        matches = [hmac.compare_digest(token.strip(), key) for key in self.api_keys]
        return any(matches)
