"""Everything that is not a stream passes through as it is: status, body, content type."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.upstream_fake import Received, Writer, fake_upstream

pytestmark = pytest.mark.anyio


def answer(status: int, body: bytes, content_type: str = "application/json") -> object:
    async def handler(request: Received, out: Writer) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("X-Upstream", "yes")]
        await out.start(status, headers, chunked=False)
        await out.raw(body)

    return handler


COMPLETION = (
    b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
)


REQUESTS = [
    pytest.param("POST", "/v1/chat/completions", {"model": "m", "messages": []}, id="chat"),
    pytest.param(
        "POST", "/v1/chat/completions", {"model": "m", "messages": [], "stream": False}, id="chat-no-stream"
    ),
    pytest.param("POST", "/v1/completions", {"model": "m", "prompt": "x"}, id="completions"),
    pytest.param("GET", "/v1/models", None, id="models"),
    pytest.param("POST", "/v1/embeddings", {"model": "e", "input": "x"}, id="embeddings"),
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
async def test_requests_reach_the_upstream_as_they_came(method: str, path: str, body: object) -> None:
    async with fake_upstream(answer(200, COMPLETION)) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            reply = await client.request(
                method, adapter + path + "?trace=1", json=body, headers={"Authorization": "Bearer sk-chan"}
            )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    [received] = upstream.requests
    assert (received.method, received.target) == (method, path + "?trace=1")
    assert received.headers["authorization"] == "Bearer sk-chan"
    if body is not None:
        assert received.json() == body


@pytest.mark.parametrize(
    ("method", "path", "body"), [p for p in REQUESTS if p.id in ("models", "embeddings")]
)
async def test_other_paths_answer_exactly_as_the_upstream_did(method: str, path: str, body: object) -> None:
    async with fake_upstream(answer(200, COMPLETION)) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            reply = await client.request(method, adapter + path, json=body)
    assert reply.content == COMPLETION
    assert reply.headers["x-upstream"] == "yes"


SGLANG_404 = b'{"object":"error","message":"model not found","type":"NotFoundError","code":404}'


async def test_an_upstream_error_status_on_other_paths_passes_through_unchanged() -> None:
    async with fake_upstream(answer(404, SGLANG_404)) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            reply = await client.post(adapter + "/v1/embeddings", json={"model": "x", "input": "y"})
    assert reply.status_code == 404
    assert reply.content == SGLANG_404


async def test_a_non_streaming_chat_error_keeps_its_status_in_openai_shape() -> None:
    async with fake_upstream(answer(404, SGLANG_404)) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            reply = await client.post(adapter + "/v1/chat/completions", json={"model": "x", "messages": []})
    assert reply.status_code == 404
    assert reply.json() == {"error": {"message": "model not found", "type": "NotFoundError", "code": 404}}


async def test_a_base_url_ending_in_v1_is_not_doubled() -> None:
    async with fake_upstream(answer(200, b'{"data":[]}')) as upstream:  # type: ignore[arg-type]
        async with (
            run_adapter(Settings(upstream=upstream.url + "/v1/")) as adapter,
            httpx.AsyncClient() as client,
        ):
            await client.get(adapter + "/v1/models")
    assert upstream.requests[0].target == "/v1/models"


async def test_hop_by_hop_headers_are_not_forwarded() -> None:
    async with fake_upstream(answer(200, b"{}")) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            await client.get(
                adapter + "/v1/models", headers={"Connection": "X-Secret", "X-Secret": "1", "TE": "x"}
            )
    received = upstream.requests[0].headers
    assert "x-secret" not in received
    assert "te" not in received
    assert received["host"] == f"127.0.0.1:{upstream.port}"


async def test_healthz_and_unknown_paths() -> None:
    async with fake_upstream(answer(200, b"{}")) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            health = await client.get(adapter + "/healthz")
            unknown = await client.get(adapter + "/admin")
            docs = await client.get(adapter + "/docs")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    assert docs.status_code == 404
    assert upstream.requests == []


async def test_cookies_stay_between_one_client_and_the_model_server() -> None:
    """A cookie the model server sets goes to the client that got it, and is
    never replayed for another client: the adapter keeps no cookie jar."""

    async def sets_a_cookie(request: Received, out: Writer) -> None:
        user = request.headers.get("x-user", "")
        headers = [("Content-Length", "2"), ("Set-Cookie", f"session={user}; Path=/")]
        await out.start(200, headers, chunked=False)
        await out.raw(b"{}")

    async with fake_upstream(sets_a_cookie) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient() as alice:
                got = await alice.get(adapter + "/v1/models", headers={"X-User": "alice"})
                await alice.get(adapter + "/v1/models", headers={"X-User": "alice"})
            async with httpx.AsyncClient() as bob:
                await bob.get(adapter + "/v1/models", headers={"X-User": "bob"})
    assert got.headers["set-cookie"] == "session=alice; Path=/"  # end to end, to the client
    first, alice_again, bob_first = upstream.requests
    assert "cookie" not in first.headers
    assert alice_again.headers["cookie"] == "session=alice"  # alice's own client sent it back
    assert "cookie" not in bob_first.headers  # nobody else's


ESCAPES = [
    "/v1/../admin",
    "/v1/%2e%2e/admin",
    "/v1/%2e%2e%2fadmin",
    "/v1/..%2f..%2fadmin",
    "/v1/%2E%2E/%2e%2e/admin",
    "/v1/./models",
    "/v1/models%5c..%5cadmin",
    "/v1/%00x",
    "/v1/models%0d%0aX-Injected:%201",
]


@pytest.mark.parametrize("target", ESCAPES)
async def test_no_target_leaves_v1_or_the_base_path(target: str) -> None:
    async with fake_upstream(answer(200, b"{}")) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url + "/prefix")) as adapter:
            reader, writer = await asyncio.open_connection(*adapter.removeprefix("http://").split(":"))
            writer.write(f"GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), 5)
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), raw[:200]
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_path")
    assert upstream.requests == []


async def test_the_path_goes_under_the_base_as_the_client_sent_it() -> None:
    async with fake_upstream(answer(200, b"{}")) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url + "/prefix")) as adapter:
            async with httpx.AsyncClient() as client:
                await client.get(adapter + "/v1/models/org%2Fname%252e?x=1")
    assert upstream.requests[0].target == "/prefix/v1/models/org%2Fname%252e?x=1"


async def test_no_redirect_echoes_the_host_header() -> None:
    async with fake_upstream(answer(200, b"{}")) as upstream:  # type: ignore[arg-type]
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            reply = await client.get(adapter + "/v1", headers={"Host": "evil.example"})
    assert reply.status_code == 404
    assert "location" not in reply.headers
    assert reply.json()["error"]["type"] == "invalid_request_error"
