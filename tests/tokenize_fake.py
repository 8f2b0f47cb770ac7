"""A model server replayed from a live recording (tests/fixtures/tokenize/), with its usage stripped.

Each fixture holds one chat request as a client sent it through the adapter, and every exchange
the live server had for it: the stream (with the server's own usage, which the adapter had asked
for) and the tokenize calls the adapter made to count it. The fake answers the stream without
its usage, as /work/shared/live/strip_usage_proxy.py did live, and each tokenize call with the
recorded answer to the same path and body (from any fixture of the same server: a count the
adapter measured once and kept is recorded where it was first made).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from tests.upstream_fake import Handler, Received, Writer, json_answer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenize"
_EVENT_END = re.compile(rb"(?<=\n\n)")


def toy_tokens(body: dict[str, Any]) -> list[str]:
    """A vLLM ``/tokenize`` of words: a ``prompt`` is its words; ``messages`` go through a chat
    template where each turn is its role, its words and an end, and the prompt ends in an open
    assistant turn (add_generation_prompt, true unless said otherwise)."""
    if "messages" not in body:
        return str(body.get("prompt", "")).split()
    tokens: list[str] = []
    for message in body["messages"]:
        tokens += [message["role"], *str(message.get("content") or "").split(), "<end>"]
    if body.get("continue_final_message"):
        tokens.pop()
    elif body.get("add_generation_prompt", True):
        tokens.append("assistant")
    return tokens


def toy_answer(body: dict[str, Any]) -> bytes:
    tokens = toy_tokens(body)
    return orjson.dumps({"count": len(tokens), "tokens": tokens})


def fixture(stem: str) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads((FIXTURES / f"{stem}.json").read_bytes())
    return found


def stems() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


def _key(path: str, body: object) -> bytes:
    return path.encode() + b" " + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def answers(server: str) -> dict[bytes, tuple[int, bytes]]:
    """Every recorded tokenize answer of one server (the fixtures named ``server-*``)."""
    found: dict[bytes, tuple[int, bytes]] = {}
    for stem in stems():
        if stem.split("-", 1)[0] == server:
            for exchange in fixture(stem)["exchanges"][1:]:
                found[_key(exchange["path"], exchange["body"])] = (
                    exchange["status"],
                    exchange["answer"].encode(),
                )
    return found


def stripped(stream: str) -> bytes:
    """The stream without usage: a chat event loses its ``usage``, a usage-only chunk is dropped;
    a Responses stream's last event has a null ``response.usage``, a Messages stream's
    ``message_delta`` no output tokens (its ``message_start`` keeps the server's input tokens)."""
    kept: list[bytes] = []
    for event in _EVENT_END.split(stream.encode()):
        head, _, data = event.rpartition(b"data: ")
        if not data.startswith(b"{"):
            kept.append(event)
            continue
        body = orjson.loads(data)
        if "type" in body:
            _strip_typed(body)
        elif body.pop("usage", None) is not None and body.get("choices") == []:
            continue
        kept.append(head + b"data: " + orjson.dumps(body) + b"\n\n")
    return b"".join(kept)


def _strip_typed(body: dict[str, Any]) -> None:
    if body["type"] in ("response.completed", "response.incomplete"):
        body["response"]["usage"] = None
    elif body["type"] == "message_delta" and isinstance(body.get("usage"), dict):
        body["usage"]["output_tokens"] = 0


def replay(stem: str) -> Handler:
    """The upstream of one fixture; a call it has no recording of answers 404."""
    recorded = fixture(stem)
    stream = stripped(recorded["exchanges"][0]["answer"])
    table = answers(stem.split("-", 1)[0])

    async def handler(request: Received, out: Writer) -> None:
        if request.target == recorded.get("path", "/v1/chat/completions"):
            await out.start(200, [("Content-Type", "text/event-stream")])
            for event in _EVENT_END.split(stream):
                await out.chunk(event)
            await out.end()
            return
        status, body = table.get(_key(request.target, orjson.loads(request.body or b"null")), (404, b"{}"))
        await json_answer(status, body)(request, out)

    return handler


async def chat_or_health(request: Received, out: Writer, stream: bytes) -> None:
    """What a fake server with a tokenizer answers besides it: ``stream`` (a chat stream,
    most often without usage) on the chat route, ``{}`` to the adapter's health checks."""
    if request.target != "/v1/chat/completions":
        await json_answer(200, b"{}")(request, out)
        return
    await out.start(200, [("Content-Type", "text/event-stream")])
    await out.chunk(stream)
    await out.end()


def with_toy_tokenizer(handler: Handler) -> Handler:
    """``handler`` for every request but ``/tokenize``, which the toy tokenizer answers."""

    async def serve(request: Received, out: Writer) -> None:
        if request.target == "/tokenize":
            await json_answer(200, toy_answer(orjson.loads(request.body)))(request, out)
            return
        await handler(request, out)

    return serve
