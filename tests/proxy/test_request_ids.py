"""A client's X-Request-ID that is no UUID: kept in our answer, and a UUID for the model server,
which (llama-cpp-python) answers anything else with an empty 400 that must still say what happened."""

from __future__ import annotations

import uuid

import httpx
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.upstream_fake import Received, Writer, fake_upstream, json_answer

pytestmark = pytest.mark.anyio


async def strict_about_ids(request: Received, out: Writer) -> None:
    """llama-cpp-python: any X-Request-ID that is no UUID gets a 400 with an empty body."""
    try:
        uuid.UUID(request.headers.get("x-request-id", ""))
    except ValueError:
        await out.start(400, [("Content-Length", "0"), ("Server", "uvicorn")], chunked=False)
        return
    await json_answer(200, b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}')(
        request, out
    )


async def test_a_client_id_that_is_no_uuid_reaches_the_server_as_one() -> None:
    async with fake_upstream(strict_about_ids) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    adapter + "/v1/chat/completions",
                    json={"model": "m", "messages": []},
                    headers={"X-Request-ID": "gateway-abc-123"},
                )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "gateway-abc-123"
    sent = upstream.requests[0].headers["x-request-id"]
    assert uuid.UUID(sent)
    assert sent == str(uuid.uuid5(uuid.NAMESPACE_URL, "sse-adapter:gateway-abc-123"))


async def test_an_empty_error_body_still_says_what_the_server_did() -> None:
    async def empty(request: Received, out: Writer) -> None:
        await out.start(400, [("Content-Length", "0"), ("Server", "uvicorn")], chunked=False)

    async with fake_upstream(empty) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    adapter + "/v1/chat/completions", json={"model": "m", "messages": []}
                )
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert "HTTP 400 with an empty body" in message
    assert "(uvicorn)" in message
    assert "log" in message
