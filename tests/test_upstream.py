"""The boundary where httpx's failures become ours, each with what to check."""

from __future__ import annotations

import httpx
import pytest

from sse_adapter.errors import (
    AdapterError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from sse_adapter.upstream import forwardable, map_errors

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
