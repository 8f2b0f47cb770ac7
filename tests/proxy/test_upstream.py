"""The boundary where httpx's failures become ours, each with what to check."""

from __future__ import annotations

import ssl
import uuid

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
from sse_adapter.proxy.upstream import forwardable, map_errors, upstream_request_id

URL = "http://tgi:80/v1/chat/completions"


@pytest.mark.parametrize(
    ("raised", "expected", "status", "hint"),
    [
        (httpx.ConnectError("refused"), UpstreamUnreachable, 502, "--upstream"),
        (httpx.ConnectTimeout("slow"), UpstreamTimeout, 504, "not overloaded"),
        (httpx.ReadTimeout("slow"), UpstreamTimeout, 504, "not overloaded"),
        (httpx.RemoteProtocolError("peer closed"), UpstreamDisconnected, 502, "log"),
        (httpx.ReadError("reset"), UpstreamDisconnected, 502, "log"),
        (httpx.DecodingError("bad gzip"), UpstreamError, 502, "failed"),
    ],
)
def test_each_failure_maps_to_a_status_and_a_hint(
    raised: Exception, expected: type[AdapterError], status: int, hint: str
) -> None:
    with pytest.raises(expected) as caught, map_errors(URL):
        raise raised
    assert caught.value.http_status == status
    # the client is told what failed and what to do; the address and the library's words go to our log
    assert URL not in caught.value.message
    assert caught.value.detail is not None
    assert URL in caught.value.detail
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


def test_an_error_without_words_is_named_by_its_type_in_the_log() -> None:
    with pytest.raises(UpstreamDisconnected, match="broke off the response") as caught, map_errors(URL):
        raise httpx.ReadError("")
    assert caught.value.detail == f"{URL}: ReadError (ReadError)"


def test_https_to_a_plain_http_port_says_the_tls_handshake_failed() -> None:
    cause = aiohttp.ClientConnectorSSLError(
        aiohttp.client_reqrep.ConnectionKey("tgi", 80, True, True, None, None, None),
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
    )
    with pytest.raises(UpstreamUnreachable) as caught, map_errors(URL):
        raise wrapped(cause, httpx.ConnectError)
    assert "TLS handshake" in caught.value.message
    assert "http://" in caught.value.message
    assert "is running" not in caught.value.message


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
    assert URL not in caught.value.message
    assert URL in (caught.value.detail or "")


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        pytest.param(
            "5f0c2a4e-8d1b-4b7e-9c55-2f1e7a9d0b11", "5f0c2a4e-8d1b-4b7e-9c55-2f1e7a9d0b11", id="uuid"
        ),
        pytest.param(
            "gateway-abc-123",
            str(uuid.uuid5(uuid.NAMESPACE_URL, "sse-adapter:gateway-abc-123")),
            id="not-a-uuid",
        ),
    ],
)
def test_the_upstream_gets_a_request_id_it_accepts(given: str, sent: str) -> None:
    assert upstream_request_id(given) == sent
    uuid.UUID(upstream_request_id(given))  # llama-cpp-python answers anything else with an empty 400
