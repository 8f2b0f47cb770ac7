"""uvicorn's HTTP/1.1 protocol (httptools), with the guards it lacks.

uvicorn bounds neither how long a client may take to send a request's head
nor how many connections may be open, and answers bytes that are no HTTP
in plain text. Here a head that is not complete within
``--request-read-timeout`` gets a 408, a connection past
``--max-connections`` a 503 at once, and both, like the 400, an
OpenAI-shaped body; each closes the connection. The body's own deadline is
the app's (``app.py``), where the answer can still be a normal response.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sse_adapter.errors import AdapterError, ClientError, RequestTimeout, TooManyConnections

__all__ = ["GuardedProtocol"]


class GuardedProtocol(HttpToolsProtocol):
    """Made by uvicorn per connection, through ``functools.partial`` for the limits."""

    def __init__(self, *args: Any, read_timeout: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self._refuse(
                TooManyConnections(
                    f"sse-adapter has its limit of {self._max_connections} open connections "
                    "(--max-connections); retry shortly"
                )
            )
            return
        self._arm()  # a client that connects and sends nothing is held no longer than a slow one

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(ClientError(f"{msg} sse-adapter speaks HTTP/1.1"))

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self._read_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        self._refuse(
            RequestTimeout(
                f"the request's head did not arrive within {self._read_timeout:g} s "
                "(--request-read-timeout); send it whole"
            )
        )

    def _refuse(self, error: AdapterError) -> None:
        """Answer at once, on the connection itself, and close it."""
        self._disarm()
        if self.transport.is_closing():
            return
        body = orjson.dumps(error.to_openai())
        status = HTTPStatus(error.http_status)
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status.value, status.phrase.encode(), len(body))
        )
        self.transport.write(head + body)
        self.transport.close()
