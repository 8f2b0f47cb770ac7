"""The one HTTP client to the model server, and the boundary where its
failures become our error tree (shared/keepalive.md: no 5 s read timeout).

httpx's request and response API, over the httpx-aiohttp transport: aiohttp
parses HTTP in C, where httpx's own transport (h11, httpcore) spends several
times the CPU per streamed event. Requests go straight to the transport, not
through an ``httpx.AsyncClient``: a client keeps one cookie jar for every
caller, so a cookie the model server set for one client would ride along on
every other client's requests, and its cookie handling costs CPU quadratic in
the number of request headers. Cookies here are end to end: the client's
``Cookie`` header goes up as it came, a ``Set-Cookie`` comes back to it, and
the adapter keeps none.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from sse_adapter import __version__
from sse_adapter.errors import (
    AdapterError,
    InvalidPath,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from sse_adapter.settings import Settings, shown_url

__all__ = [
    "ERROR_BODY_LIMIT",
    "Upstream",
    "UpstreamRequest",
    "forwardable",
    "is_messages_path",
    "map_errors",
    "read_at_most",
    "upstream_path",
    "upstream_request_id",
    "why",
]

# RFC 9110, section 7.6.1: meaningful for one connection only. Host and the
# body's length are set again for the upstream connection.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_PROBE_AGENT = f"sse-adapter/{__version__}"  # its own requests, told apart in the server's logs
_WRITE_TIMEOUT = 60.0  # sending the request body; the answer may take as long as it takes
_IDLE_CONNECTIONS = 30.0  # seconds an unused keep-alive connection to the model server stays open
ERROR_BODY_LIMIT = 64 * 1024  # enough of an error answer for any message


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The end-to-end headers of a message, for the next hop."""
    pairs = list(headers)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    dropped = _HOP_BY_HOP | named
    return [(name, value) for name, value in pairs if name.lower() not in dropped]


# What may stand in a path as sent: the client's own %-escapes are kept; anything else is escaped.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_SLASHES = re.compile("/{2,}")


_KEY_HEADERS = frozenset({"authorization", "x-api-key"})


def upstream_request_id(given: str) -> str:
    """The request id as the model server gets it: a UUID. llama-cpp-python answers any other
    with an empty 400; the client's own id stays in our log and answer headers, and this one is
    derived from it, the same each time, so the server's log can still be matched to ours."""
    try:
        uuid.UUID(given)
        return given  # a UUID already, in any of its spellings: as it came
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "sse-adapter:" + given))


def is_messages_path(path: str) -> bool:
    """Anthropic's routes: their clients read Anthropic's error shape and send ``x-api-key``."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def upstream_path(raw: bytes) -> str:
    """The request's path as the client sent it, to be put under the upstream's base.

    Refused when, once decoded, it leaves ``/v1/`` (a ``..`` or ``.`` segment,
    however escaped) or holds a control character or a backslash: servers and
    HTTP libraries decode and resolve those, so they would reach paths outside
    ``/v1/`` and outside the base path of ``--upstream``.
    """
    path = quote(raw, safe=_PATH_SAFE)
    decoded = unquote(path)
    segments = decoded.split("/")
    if (
        not decoded.startswith("/v1/")
        or "." in segments
        or ".." in segments
        or any(char < " " or char in "\\\x7f" for char in decoded)
    ):
        raise InvalidPath(
            f"the request path {path[:200]!r} leaves /v1/ once decoded, or holds a control character or a "
            "backslash; sse-adapter forwards only paths under /v1/"
        )
    return path


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What goes to the model server: the client's request, as it came."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def with_body(self, body: bytes) -> UpstreamRequest:
        return replace(self, body=body)

    @property
    def route(self) -> str:
        """The path as routed: decoded, each run of slashes one. What the
        adapter learns of a path is kept under it, whichever of its many
        spellings (``/v1/chat/%63ompletions``) a client sent; the path
        forwarded is left as it is."""
        return _SLASHES.sub("/", unquote(self.path))


def why(exc: BaseException) -> str:
    """An error's words, or its name: some transport errors carry no message."""
    return str(exc) or type(exc).__name__


@contextmanager
def map_errors(url: str) -> Iterator[None]:
    """Turn the transport's failures into ours, each saying what to check."""
    try:
        yield
    except (httpx.HTTPError, aiohttp.ClientError) as exc:
        raise _ours(exc, url) from exc


def _ours(exc: httpx.HTTPError | aiohttp.ClientError, url: str) -> AdapterError:
    # httpx-aiohttp re-raises aiohttp's errors as httpx's, but coarsely (a
    # refused connection becomes ConnectTimeout): judge by the original.
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
    detail = f"{url}: {why(cause)} ({type(cause).__name__})"
    if isinstance(cause, (httpx.TimeoutException, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(
            "the model server did not answer in time; check that it is up and not overloaded", detail
        )
    if _is_tls(cause):
        return UpstreamUnreachable(
            "the TLS handshake with the model server failed: if it speaks plain HTTP, give --upstream "
            "as http://, not https://",
            detail,
        )
    if isinstance(
        cause,
        (
            httpx.ConnectError,
            httpx.UnsupportedProtocol,
            aiohttp.ClientConnectorError,
            aiohttp.InvalidURL,
            aiohttp.NonHttpUrlClientError,
        ),
    ):
        return UpstreamUnreachable(
            "cannot connect to the model server; check that it is running and that --upstream points at it",
            detail,
        )
    if isinstance(
        cause,
        (
            httpx.RemoteProtocolError,
            httpx.ReadError,
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
        ),
    ):
        return UpstreamDisconnected(
            "the model server broke off the response; the answer is incomplete: check the model server's log",
            detail,
        )
    return UpstreamError("the request to the model server failed; sse-adapter's log says why", detail)


def _is_tls(cause: BaseException) -> bool:
    """A TLS handshake that failed: most often https:// to a server that speaks plain HTTP."""
    if isinstance(cause, aiohttp.ClientSSLError):
        return True
    chain = [cause, cause.__cause__, getattr(cause, "os_error", None)]
    return any(isinstance(link, ssl.SSLError) for link in chain) or "SSL" in why(cause)


async def read_at_most(response: httpx.Response, url: str, limit: int) -> bytes:
    """A response's body, cut at ``limit`` bytes, and the response closed:
    for answers read for what they say (errors, the adapter's own calls)."""
    body = bytearray()
    try:
        with map_errors(url):
            async for part in response.aiter_bytes():
                body += part
                if len(body) > limit:
                    break
    finally:
        await response.aclose()
    return bytes(body[:limit])


class Upstream:
    """The model server: one pooled connection set for the app's whole life.

    Open it with ``async with``: aiohttp binds its session to the running loop.
    """

    def __init__(self, settings: Settings) -> None:
        # The user:password an --upstream URL may carry goes as Basic auth, never into a message.
        self.base_url = shown_url(settings.upstream)
        parts = urlsplit(settings.upstream)
        basic = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        self._auth = (
            f"Bearer {settings.upstream_api_key}"
            if settings.upstream_api_key is not None
            else f"Basic {base64.b64encode(basic.encode()).decode()}"
            if parts.username is not None
            else None
        )
        # No read timeout: a reasoning model may think for minutes before its
        # first token. Stalls are the relay's business, not the socket's.
        self._timeouts = {
            "connect": settings.connect_timeout,
            "read": None,
            "write": _WRITE_TIMEOUT,
            "pool": None,
        }
        self._api_key = settings.upstream_api_key
        # With --api-key the client's key is the adapter's, never the model server's.
        self._keep_client_key = not settings.api_keys and self._auth is None
        self._session: aiohttp.ClientSession | None = None
        self._transport: AiohttpTransport | None = None

    async def __aenter__(self) -> Upstream:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_IDLE_CONNECTIONS),
            cookie_jar=aiohttp.DummyCookieJar(),  # the adapter keeps no cookies
            auto_decompress=False,  # httpx decodes, for the clients that asked for an encoding
            trust_env=False,  # the upstream is what --upstream says, whatever HTTP_PROXY says
        )
        self._transport = AiohttpTransport(client=self._session)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._transport is not None:
            await self._transport.aclose()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session underneath, for what looks at its connection pool."""
        if self._session is None:
            raise RuntimeError("the upstream client is used outside 'async with'")
        return self._session

    def url(self, request: UpstreamRequest) -> str:
        return self.base_url + request.path + (f"?{request.query}" if request.query else "")

    async def open(self, request: UpstreamRequest) -> httpx.Response:
        """Send a request; the response comes back with its body unread."""
        url = self.url(request)
        built = httpx.Request(
            request.method,
            url,
            headers=self._headers(request.headers, is_messages_path(request.route)),
            content=request.body,
            extensions={"timeout": self._timeouts},
        )
        return await self.send(built, url)

    async def send(self, request: httpx.Request, url: str) -> httpx.Response:
        if self._transport is None:
            raise RuntimeError("the upstream client is used outside 'async with'")
        with map_errors(url):
            return await self._transport.handle_async_request(request)

    async def get(self, path: str, within: float) -> int:
        """The status of a small GET (a health check), its body read and dropped;
        TimeoutError past ``within`` seconds."""
        url = self.base_url + path
        headers = [("user-agent", _PROBE_AGENT), *([("authorization", self._auth)] if self._auth else [])]
        async with asyncio.timeout(within):
            response = await self.send(httpx.Request("GET", url, headers=headers), url)
            try:
                with map_errors(url):
                    await response.aread()
            finally:
                await response.aclose()
        return response.status_code

    async def post_json(self, path: str, body: object, within: float, limit: int) -> tuple[int, bytes]:
        """The status and body (at most ``limit`` bytes) of a small JSON POST
        of the adapter's own (a tokenize call); TimeoutError past ``within``."""
        url = self.base_url + path
        headers = [
            ("user-agent", _PROBE_AGENT),
            ("content-type", "application/json"),
            *([("authorization", self._auth)] if self._auth else []),
        ]
        request = httpx.Request("POST", url, headers=headers, content=orjson.dumps(body))
        async with asyncio.timeout(within):
            response = await self.send(request, url)
            return response.status_code, await read_at_most(response, url, limit)

    def _headers(self, given: Iterable[tuple[str, str]], anthropic: bool = False) -> list[tuple[str, str]]:
        forwarded = [
            (name, upstream_request_id(value) if name.lower() == "x-request-id" else value)
            for name, value in forwardable(given)
        ]
        if not self._keep_client_key:  # the client's key, in either header, is the adapter's
            forwarded = [(name, value) for name, value in forwarded if name.lower() not in _KEY_HEADERS]
        if self._auth is not None:
            forwarded.append(("authorization", self._auth))
        if anthropic and self._api_key is not None:  # what Anthropic-speaking servers read
            forwarded.append(("x-api-key", self._api_key))
        if not any(name.lower() == "accept-encoding" for name, _ in forwarded):
            # else aiohttp would ask for gzip on behalf of a client that never did
            forwarded.append(("accept-encoding", "identity"))
        return forwarded
