"""Who may use the adapter, and the id every request carries (ASGI middleware).

Plain ASGI rather than a BaseHTTPMiddleware, which would buffer and break
streaming responses.
"""

from __future__ import annotations

import hmac
import re
import uuid

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sse_adapter.errors import Unauthorized

__all__ = ["Guard"]

_REQUEST_ID = b"x-request-id"
_SAFE_ID = re.compile(rb"[\x21-\x7e]{1,200}")  # printable, no spaces: safe to log and to pass on


class Guard:
    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...]) -> None:
        self.app = app
        self.api_keys = tuple(key.encode() for key in api_keys)

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

        if self.api_keys and scope["path"].startswith("/v1/") and not self._authorised(headers):
            error = Unauthorized(
                "missing or wrong API key: send 'Authorization: Bearer <key>' with one of the adapter's "
                "--api-key values (in One-API, the channel's key)"
            )
            reply = JSONResponse(error.to_openai(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await reply(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)

    def _authorised(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = next((value for name, value in headers if name == b"authorization"), b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # every key is compared, each in constant time: the time taken tells nothing
        matches = [hmac.compare_digest(token.strip(), key) for key in self.api_keys]
        return any(matches)
