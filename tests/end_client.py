"""The end client behind One-API, for the wire tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from sse_adapter.tools.endclient import EndClientView, read_through_one_api
from sse_adapter.tools.oneapi import LINE_LIMIT

FIXTURES = Path(__file__).parent / "fixtures"

# httpx loads certifi's CA bundle into a new SSL context for each client it makes, some 40 ms
# of CPU; the tests speak plain http over loopback, and the clients they make by the hundred
# share this one.
TLS = httpx.create_ssl_context()

Seen = EndClientView


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def assert_spec_clean(raw: bytes) -> None:
    """Only single-line ``data: `` frames, each ended by a blank line, LF only."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    for block in raw[:-2].split(b"\n\n"):
        assert block.startswith(b"data: "), block[:80]
        assert b"\n" not in block, block[:80]
        assert b"\r" not in block, block[:80]
        assert len(block) <= LINE_LIMIT


async def stream(base_url: str, path: str, body: dict[str, Any]) -> EndClientView:
    """POST a streaming request and read it the way One-API's client would."""
    async with httpx.AsyncClient(timeout=10, verify=TLS) as client:
        return await read_through_one_api(client, base_url + path, body)
