"""The boundary where httpx's failures become ours, each with what to check."""

from __future__ import annotations

import aiohttp
import httpx
import pytest
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from sse_adapter.errors import (
    AdapterError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from sse_adapter.proxy.upstream import forwardable, map_errors

URL = "http://tgi:80/v1/chat/completions"


@pytest.mark.parametrize(
    ("raised", "expected", "status", "hint"),
    [
        (httpx.ConnectError("refused"), UpstreamUnreachable, 502, "--upstream"),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, 504, "not overloaded"),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504, "not overloaded"),
        (httpx.RemoteProtocolError("peer closed"), UpstreamDisconnected, 502, "logs"),
        (httpx.ReadError("reset"), UpstreamDisconnected, 502, "logs"),
        (httpx.DecodingError("bad gzip"), UpstreamError, 502, "failed"),
    ],
)
def test_each_failure_maps_to_a_status_and_a_hint(
    raised: Exception, expected: type[AdapterError], status: int, hint: str
) -> None:
    with pytest.raises(expected) as caught, map_errors(URL):
        raise raised
    assert caught.value.http_status == status
    assert URL in caught.value.message
    assert hint in caught.value.message
    assert caught.value.to_openai()["error"]["type"] == "upstream_error"


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = [
        ("Connection", "keep-alive, X-Trace"),
        ("X-Trace", "1"),
        ("Keep-Alive", "5"),
        ("Authorization", "Bearer k"),
        ("Host", "adapter"),
        ("Content-Length", "3"),
    ]
    assert forwardable(headers) == [("Authorization", "Bearer k")]


def test_an_error_without_words_is_named_by_its_type() -> None:
    with pytest.raises(UpstreamDisconnected, match=r"broke off the response \(ReadError\)"), map_errors(URL):
        raise httpx.ReadError("")


INFO = aiohttp.RequestInfo(yarl.URL(URL), "POST", CIMultiDictProxy(CIMultiDict()), yarl.URL(URL))


def wrapped(cause: Exception, as_: type[httpx.HTTPError]) -> httpx.HTTPError:
    """What httpx-aiohttp raises: an httpx error, coarsely chosen, from aiohttp's own."""
    error = as_(str(cause))
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        # httpx-aiohttp calls every aiohttp connection error a ConnectTimeout: judge by the cause
        (wrapped(aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout), UpstreamDisconnected),
        (
            wrapped(aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.ConnectTimeout),
            UpstreamDisconnected,
        ),
        (wrapped(aiohttp.ClientPayloadError("not completed"), httpx.ReadError), UpstreamDisconnected),
        (wrapped(aiohttp.ConnectionTimeoutError("slow"), httpx.ConnectTimeout), UpstreamTimeout),
        (aiohttp.ClientResponseError(INFO, (), status=400, message="Invalid HTTP"), UpstreamError),
    ],
    ids=["disconnected", "reset", "payload-cut", "connect-timeout", "not-http"],
)
def test_aiohttp_failures_map_by_their_cause(raised: Exception, expected: type[AdapterError]) -> None:
    with pytest.raises(expected) as caught, map_errors(URL):
        raise raised
    assert type(caught.value) is expected
    assert URL in caught.value.message
