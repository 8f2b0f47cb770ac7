"""Usage counted for streams that live servers sent without it, replayed from their recordings.

Live, vLLM and llama-server stood behind strip_usage_proxy.py, so the adapter had to count each
stream with the server's own tokenizer; the recordings (tests/fixtures/tokenize/) hold the
server's own usage of the same generation. Replayed here, the adapter's count must equal the
server's, except for the shapes README's Billing section lists with their measured error.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.tokenize_fake import fixture, replay, stems, stripped
from tests.upstream_fake import fake_upstream

pytestmark = pytest.mark.anyio

# Completion tokens counted minus the server's, where a count cannot be exact (README, "Billing");
# None: no count at all (no number is made up).
MEASURED_ERROR: dict[str, int | None] = {
    # the scripted model writes <tool_call>{...}</tool_call>; its template renders a newline inside each tag
    "vllm-tool-call": 2,
    # the length cut the last call's arguments: not JSON, so the template cannot render the turn
    "llama-tool-call": None,
    # a model whose generated tokens are word pieces its tokenizer never makes: re-tokenised, the
    # text is characters (llama-server's own count 30, the text's 98)
    "llamawords-plain": 68,
}


CHAT = [stem for stem in stems() if "path" not in fixture(stem)]
TYPED = [stem for stem in stems() if "path" in fixture(stem)]  # Responses and Messages


async def answer_to(stem: str) -> bytes:
    """The adapter's answer to the fixture's request, its upstream the recording."""
    path = fixture(stem).get("path", "/v1/chat/completions")
    async with fake_upstream(replay(stem), handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient(timeout=60) as http:
                answer = await http.post(adapter + path, json=fixture(stem)["request"])
    assert answer.status_code == 200
    return answer.content


async def counted(stem: str) -> dict[str, int] | None:
    """The usage the adapter sends for the fixture's chat stream (None: none)."""
    answer = await answer_to(stem)
    assert answer.endswith(b"data: [DONE]\n\n")
    chunks: list[dict[str, Any]] = [
        orjson.loads(line[6:]) for line in answer.split(b"\n") if line.startswith(b"data: {")
    ]
    assert not [chunk for chunk in chunks if "error" in chunk]
    usage = next((chunk["usage"] for chunk in chunks if chunk.get("usage")), None)
    if usage is None:
        return None
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return {name: usage[name] for name in ("prompt_tokens", "completion_tokens")}


def test_every_shape_of_the_issue_was_recorded_on_both_servers() -> None:
    shapes = {"plain", "multi-turn", "stop-string", "max-tokens", "tool-call", "tool-result", "reasoning"}
    for server in ("vllm", "llama"):
        assert {f"{server}-{shape}" for shape in shapes | {"continue"}} <= set(stems())
    assert "vllm-n2" in stems()  # llama-server refuses n > 1


@pytest.mark.parametrize("stem", CHAT)
async def test_the_count_is_the_one_the_adapter_made_live(stem: str) -> None:
    assert await counted(stem) == fixture(stem)["counted"]


@pytest.mark.parametrize("stem", CHAT)
async def test_the_count_equals_the_servers_own_but_where_measured_otherwise(stem: str) -> None:
    usage, found = fixture(stem)["usage"], await counted(stem)
    assert usage is not None, "the live server sent its own usage"
    if stem in MEASURED_ERROR and MEASURED_ERROR[stem] is None:
        assert found is None
        return
    assert found is not None
    assert found["prompt_tokens"] == usage["prompt_tokens"]
    assert found["completion_tokens"] - usage["completion_tokens"] == MEASURED_ERROR.get(stem, 0)


@pytest.mark.parametrize("stem", TYPED)
async def test_responses_and_messages_are_counted_as_their_chat_equivalents(stem: str) -> None:
    assert b'"output_tokens":18' not in stripped(fixture(stem)["exchanges"][0]["answer"])  # it must count
    events = [
        orjson.loads(line[6:]) for line in (await answer_to(stem)).split(b"\n") if line.startswith(b"data: {")
    ]
    if fixture(stem)["path"] == "/v1/responses":
        usage = events[-1]["response"]["usage"]
        found = {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"]}
    else:
        start = next(event for event in events if event["type"] == "message_start")
        delta = [event for event in events if event["type"] == "message_delta"][-1]
        found = {
            "prompt_tokens": start["message"]["usage"]["input_tokens"],  # the server's own
            "completion_tokens": delta["usage"]["output_tokens"],
        }
    assert found == fixture(stem)["usage"] == fixture(stem)["counted"]
