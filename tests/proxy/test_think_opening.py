"""``--think-tags split`` asks the server whether the model's template opens
``<think>`` when the request does not say: a thought of any length then lands
in the reasoning field (issue 23, item 14). The servers' answers are live
recordings (tests/fixtures/templates/): llama-server with
templates/think_tools.jinja, and vLLM's ``/tokenize`` with ``return_token_strs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from sse_adapter.proxy import templates
from sse_adapter.proxy.templates import opens_think
from sse_adapter.settings import Settings, Tags
from tests.adapter_server import run_adapter
from tests.end_client import Seen, stream
from tests.upstream_fake import Handler, Received, Writer, content_frame, fake_upstream, json_answer

pytestmark = pytest.mark.anyio

RECORDED = Path(__file__).parent.parent / "fixtures" / "templates"
CHAT = "/v1/chat/completions"
THOUGHT = "The user asks for 2 + 2. Adding two and two gives four, so the answer is 4. " * 8  # > 256
ANSWER = "\n\nThe answer is 4."


def recorded(stem: str) -> bytes:
    return (RECORDED / f"{stem}.json").read_bytes()


def finish_frame() -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
    return b"data: " + orjson.dumps({**body, "choices": [choice]}) + b"\n\n"


def server(answers: dict[str, list[tuple[int, bytes]]], asked: list[str]) -> Handler:
    """A server streaming a thought the prompt opened; its template endpoints answer
    in turn from ``answers`` (the last answer again once they run out), else 404."""
    text = THOUGHT + "</think>" + ANSWER
    frames = [content_frame(text[n : n + 9]) for n in range(0, len(text), 9)]
    stream_body = b"".join([*frames, finish_frame(), b"data: [DONE]\n\n"])

    async def handler(request: Received, out: Writer) -> None:
        path = request.target.split("?")[0]
        if path == CHAT:
            await out.start(200, [("Content-Type", "text/event-stream")])
            await out.chunk(stream_body)
            await out.end()
            return
        if path == "/health":
            await json_answer(200, b"{}")(request, out)
            return
        body = request.json()
        if path != "/apply-template" and not (isinstance(body, dict) and body.get("return_token_strs")):
            await json_answer(404, b'{"detail":"Not Found"}')(request, out)  # the token counter's search
            return
        asked.append(path)
        given = answers.get(path, [(404, b'{"detail":"Not Found"}')])
        status, answer = given.pop(0) if len(given) > 1 else given[0]
        await json_answer(status, answer)(request, out)

    return handler


def reasoning(seen: Seen) -> str:
    return "".join(
        (choice.get("delta") or {}).get("reasoning_content") or ""
        for chunk in seen.chunks
        for choice in chunk.get("choices") or []
    )


async def streams(
    answers: dict[str, list[tuple[int, bytes]]], requests: int = 1
) -> tuple[list[Seen], list[str]]:
    asked: list[str] = []
    async with fake_upstream(server(answers, asked), handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, think_tags=Tags.SPLIT)) as adapter:
            seen = [
                await stream(adapter, CHAT, {"model": "m", "stream": True, "messages": []})
                for _ in range(requests)
            ]
    return seen, asked


async def test_llama_servers_template_opens_the_thought_and_a_long_one_is_reasoning() -> None:
    answers = {"/apply-template": [(200, recorded("llamacpp-apply-template-think"))]}
    seen, asked = await streams(answers, requests=2)
    for one in seen:
        assert (reasoning(one), one.text()) == (THOUGHT, ANSWER)
    assert asked == ["/apply-template"]  # once for the model, not once a stream


async def test_vllms_token_strings_say_it_too() -> None:
    strings: dict[str, Any] = orjson.loads(recorded("vllm-tokenize-token-strs"))
    closing = strings["token_strs"][:-1]  # the recording's own template opens no thought
    assert not opens_think("".join(strings["token_strs"]))
    opened = {**strings, "token_strs": [*closing, "<think>", "\u010a"]}
    [seen], asked = await streams({"/tokenize": [(200, orjson.dumps(opened))]})
    assert (reasoning(seen), seen.text()) == (THOUGHT, ANSWER)
    assert asked == ["/apply-template", "/tokenize"]


async def test_a_template_that_closes_the_thought_leaves_the_answer_content() -> None:
    answers = {"/apply-template": [(200, recorded("llamacpp-apply-template-think-off"))]}
    [seen], _ = await streams(answers)
    assert reasoning(seen) == ""
    assert seen.text() == THOUGHT + "</think>" + ANSWER  # a lone </think> stays text


async def test_a_server_that_cannot_say_leaves_the_guess_to_the_answer() -> None:
    [seen], asked = await streams({})
    # Unsaid, and the thought past the 256 characters the start is held for: content.
    assert seen.text() == THOUGHT + "</think>" + ANSWER
    assert asked == ["/apply-template", "/tokenize"]


async def test_a_server_that_fails_is_asked_again_on_a_later_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templates, "_RETRY_AFTER", 0.0)
    think = recorded("llamacpp-apply-template-think")
    first, second = (await streams({"/apply-template": [(503, b"{}"), (200, think)]}, requests=2))[0]
    assert reasoning(first) == ""  # the server was loading: unsaid, as before
    assert (reasoning(second), second.text()) == (THOUGHT, ANSWER)


async def test_what_the_request_says_is_not_asked_of_the_server() -> None:
    asked: list[str] = []
    body = {"model": "m", "stream": True, "messages": [], "chat_template_kwargs": {"enable_thinking": True}}
    async with fake_upstream(server({}, asked), handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, think_tags=Tags.SPLIT)) as adapter:
            seen = await stream(adapter, CHAT, body)
    assert (reasoning(seen), seen.text()) == (THOUGHT, ANSWER)
    assert asked == []


@pytest.mark.parametrize(
    ("prompt", "opened"),
    [
        ("<|im_start|>assistant\n<think>\n", True),
        ("<|im_start|>assistant\n<think>", True),
        ("assistant\u010a<think>\u010a", True),  # byte-level BPE token strings
        ("\u2581assistant<0x0A><think><0x0A>", True),  # SentencePiece's
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
        ("<|im_start|>assistant\n", False),
        ("", False),
    ],
)
def test_a_prompt_opens_the_thought_when_it_ends_in_think(prompt: str, opened: bool) -> None:
    assert opens_think(prompt) is opened
