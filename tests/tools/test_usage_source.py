"""``sse-adapter probe`` says where a route's usage comes from: the server's own count,
one the adapter counted (exactly or approximately), or none."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sse_adapter.proxy.tokens import Tokenizer
from sse_adapter.repair.format import Format
from sse_adapter.tools import usage_source as source
from sse_adapter.tools.probe_typed import request
from sse_adapter.tools.usage_source import chat_request, exactness, usage_source
from tests.end_client import fixture
from tests.tokenize_fake import toy_answer
from tests.upstream_fake import Received, Writer, content_frame, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

REAL = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
PLACEHOLDER = {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}


def server(usage: dict[str, Any] | None, tokenize: bool) -> Any:
    """A chat server: ``usage`` in a ``choices: []`` chunk when asked; a vLLM /tokenize if ``tokenize``."""

    async def handler(received: Received, out: Writer) -> None:
        if received.target == "/tokenize":
            body = received.json()
            answer = toy_answer(body) if tokenize and isinstance(body, dict) else b'{"detail":"Not Found"}'
            await json_answer(200 if tokenize else 404, answer)(received, out)
            return
        if received.target != "/v1/chat/completions":
            await json_answer(200, b"{}")(received, out)
            return
        frames = [content_frame("Hi")]
        if usage is not None:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
            frames.append(b"data: " + orjson.dumps({**chunk, "usage": usage}) + b"\n\n")
        await sse([*frames, b"data: [DONE]\n\n"])(received, out)

    return handler


@pytest.mark.parametrize(
    ("usage", "tokenize", "said"),
    [
        pytest.param(REAL, False, "server's", id="servers"),
        pytest.param(PLACEHOLDER, True, "counted (exact)", id="placeholder-counted"),
        pytest.param(None, True, "counted (exact)", id="none-sent-counted"),
        pytest.param(None, False, "none", id="none"),
        pytest.param(PLACEHOLDER, False, "none", id="placeholder-uncounted"),
    ],
)
async def test_where_the_chat_usage_comes_from(
    usage: dict[str, Any] | None, tokenize: bool, said: str
) -> None:
    async with fake_upstream(server(usage, tokenize), handles_probes=True) as upstream:
        assert await usage_source(upstream.url, "m", None, Format.CHAT, chat_request("m")) == said


async def test_a_recorded_messages_stream_carries_the_servers_usage() -> None:
    recorded = fixture("live/vllm-messages-text.sse")
    async with fake_upstream(sse([recorded])) as upstream:
        body, _ = request(Format.MESSAGES, "m", None)
        assert await usage_source(upstream.url, "m", None, Format.MESSAGES, body) == "server's"


def test_template_aware_tokenizers_are_exact_and_others_approximate() -> None:
    exact = {tokenizer for tokenizer in Tokenizer if exactness(tokenizer) == "exact"}
    assert exact == {Tokenizer.VLLM, Tokenizer.LLAMA_CPP}  # both the prompt and the answer's turn rendered
    # TGI renders no answer back; llama-cpp-python no template at all
    assert exactness(Tokenizer.TGI) == exactness(Tokenizer.LLAMA_CPP_PYTHON) == "approximate"


def test_metrics_are_read_for_the_route_only() -> None:
    page = 'sse_adapter_repairs_total{kind="usage_counted",route="messages"} 1.0\n'
    assert source._counted(page, Format.MESSAGES)
    assert not source._counted(page, Format.CHAT)
