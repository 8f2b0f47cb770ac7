"""The one HTTP client to the model server, and the boundary where its
failures become our error tree (shared/keepalive.md: no 5 s read timeout)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType

import httpx

from sse_adapter.errors import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from sse_adapter.settings import Settings

__all__ = ["Upstream", "UpstreamRequest", "forwardable", "map_errors", "why"]

# RFC 9110, section 7.6.1: meaningful for one connection only. Host and the
# body's length are set again for the upstream connection by httpx.
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


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The end-to-end headers of a message, for the next hop."""
    pairs = list(headers)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(name, value) for name, value in pairs if name.lower() not in _HOP_BY_HOP | named]


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


def why(exc: Exception) -> str:
    """An error's words, or its name: some httpx errors carry no message."""
    return str(exc) or type(exc).__name__


@contextmanager
def map_errors(url: str) -> Iterator[None]:
    """Turn httpx's failures into ours, each saying what to check."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(
            f"the upstream at {url} did not answer in time ({type(exc).__name__}); "
            "check that the model server is up and not overloaded"
        ) from exc
    except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
        raise UpstreamUnreachable(
            f"cannot connect to the upstream at {url} ({why(exc)}); "
            "check that the model server is running and that --upstream points at it"
        ) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise UpstreamDisconnected(
            f"the upstream at {url} broke off the response ({why(exc)}); "
            "the answer is incomplete: check the model server's logs"
        ) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"the request to the upstream at {url} failed: {why(exc)}") from exc


class Upstream:
    """The model server: one pooled client for the app's whole life."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.upstream
        # No read timeout: a reasoning model may think for minutes before its
        # first token. Stalls are the relay's business, not the socket's.
        timeout = httpx.Timeout(connect=settings.connect_timeout, read=None, write=60.0, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)
        # With --api-key the client's key is the adapter's, never the model server's.
        self._keep_client_key = not settings.api_keys and settings.upstream_api_key is None
        self._key = settings.upstream_api_key

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.aclose()

    def url(self, request: UpstreamRequest) -> str:
        return self.base_url + request.path + (f"?{request.query}" if request.query else "")

    async def open(self, request: UpstreamRequest) -> httpx.Response:
        """Send a request; the response comes back with its body unread."""
        url = self.url(request)
        forwarded = forwardable(request.headers)
        if not self._keep_client_key:
            forwarded = [(name, value) for name, value in forwarded if name.lower() != "authorization"]
        if self._key is not None:
            forwarded.append(("authorization", f"Bearer {self._key}"))
        if not any(name.lower() == "accept-encoding" for name, _ in forwarded):
            # else httpx would ask for gzip on behalf of a client that never did
            forwarded.append(("accept-encoding", "identity"))
        built = self.client.build_request(request.method, url, headers=forwarded, content=request.body)
        with map_errors(url):
            return await self.client.send(built, stream=True)
