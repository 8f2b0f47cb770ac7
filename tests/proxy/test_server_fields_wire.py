"""What the model server sent beside the text reaches the client, over real sockets.

llama-server answers a stream that asked for usage with a ``choices: []``
chunk holding the usage, its ``timings`` and its ``system_fingerprint``
(../shared/live/README.md). The adapter holds that chunk for the end and
sends it again: every field the server put in it goes out with it.

vLLM now sends reasoning only as ``reasoning``; with ``--reasoning-field
both`` clients that read only ``reasoning_content`` get it too.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sse_adapter.settings import ReasoningField, Settings
from tests.adapter_server import run_adapter
from tests.end_client import assert_spec_clean, stream
from tests.upstream_fake import Received, Writer, fake_upstream, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
ASK = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
HEAD = {"id": "chatcmpl-l", "object": "chat.completion.chunk", "created": 1, "model": "m"}
FINGERPRINT = "b6000-a1b2c3d"
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
TIMINGS = {"prompt_n": 5, "prompt_ms": 12.5, "predicted_n": 2, "predicted_ms": 40.1}


def data(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps({**HEAD, "system_fingerprint": FINGERPRINT, **chunk}) + b"\n\n"


async def llama_server(received: Received, out: Writer) -> None:
    """Text, a finish, then (usage asked) the usage chunk with timings, as llama-server streams."""
    request = received.json()
    assert isinstance(request, dict)
    frames = [
        data({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}),
        data({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ]
    if (request.get("stream_options") or {}).get("include_usage") is True:
        frames.append(data({"choices": [], "usage": USAGE, "timings": TIMINGS}))
    await sse([*frames, b"data: [DONE]\n\n"])(received, out)


@pytest.mark.parametrize("client_asked", [True, False], ids=["usage-asked", "usage-not-asked"])
async def test_the_usage_chunk_keeps_llama_servers_timings_and_fingerprint(client_asked: bool) -> None:
    body = {**ASK, "stream_options": {"include_usage": True}} if client_asked else ASK
    async with (
        fake_upstream(llama_server) as upstream,
        run_adapter(Settings(upstream=upstream.url)) as adapter,
    ):
        seen = await stream(adapter, CHAT, body)
    assert_spec_clean(seen.raw)
    last = seen.chunks[-1]
    assert (last["usage"], last["timings"], last["system_fingerprint"]) == (USAGE, TIMINGS, FINGERPRINT)
    assert (last["choices"] == []) is client_asked  # unasked, the usage rides on the finish chunk
    assert seen.text() == "Hi"


async def vllm_reasoning(received: Received, out: Writer) -> None:
    frames = [
        data({"choices": [{"index": 0, "delta": {"reasoning": "Think"}, "finish_reason": None}]}),
        data({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
    ]
    await sse([*frames, b"data: [DONE]\n\n"])(received, out)


async def test_both_sends_vllms_reasoning_under_both_names() -> None:
    async with fake_upstream(vllm_reasoning) as upstream:
        async with run_adapter(
            Settings(upstream=upstream.url, reasoning_field=ReasoningField.BOTH)
        ) as adapter:
            seen = await stream(adapter, CHAT, ASK)
    assert_spec_clean(seen.raw)
    deltas = [chunk["choices"][0]["delta"] for chunk in seen.chunks if chunk["choices"]]
    thinking = [delta for delta in deltas if delta.get("reasoning") or delta.get("reasoning_content")]
    assert thinking == [{"reasoning": "Think", "reasoning_content": "Think"}]
    assert seen.text() == "Hi"
