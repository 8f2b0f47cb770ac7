"""Whole non-stream bodies: usage found wherever the server put its counts (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sse_adapter.errors import UpstreamError
from sse_adapter.repair.chunks import Kind
from sse_adapter.repair.completion import Assembler, normalise_completion, usage_of
from sse_adapter.repair.fitting import serialised
from sse_adapter.settings import Settings


def serialisable(body: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(serialised(body))
    return parsed


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        ({}, (0, 0)),
        ({"usage": None}, (0, 0)),
        ({"details": {"generated_tokens": 5}}, (0, 5)),
        ({"prompt_eval_count": 4, "eval_count": 6}, (4, 6)),
        ({"tokens_evaluated": 3, "tokens_predicted": 2}, (3, 2)),
    ],
    ids=["nothing", "null", "tgi", "ollama", "llamacpp"],
)
def test_usage_from_the_servers_own_counts(body: dict[str, Any], usage: tuple[int, int]) -> None:
    prompt, completion = usage
    assert usage_of(body) == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def test_an_empty_id_is_filled() -> None:
    body = normalise_completion({"id": "", "choices": []}, Kind.CHAT, Settings(upstream="http://x"), 5)
    assert body["id"].startswith("chatcmpl-")
    assert (body["object"], body["created"]) == ("chat.completion", 5)


def test_choices_are_assembled_by_index() -> None:
    assembler = Assembler(Kind.CHAT)
    for index, text in [(1, "b"), (0, "a"), (1, "B")]:
        assembler.add({"id": "x", "choices": [{"index": index, "delta": {"content": text}}]})
    choices = assembler.result()["choices"]
    assert [(c["index"], c["message"]["content"]) for c in choices] == [(0, "a"), (1, "bB")]


def test_counts_that_sum_past_64_bits_are_an_upstream_error() -> None:
    body = {
        "choices": [{"message": {"content": "a"}}],
        "prompt_eval_count": 2**64 - 1,
        "eval_count": 2**64 - 1,
    }
    normalised = normalise_completion(body, Kind.CHAT, Settings(upstream="http://x"), 1)
    with pytest.raises(UpstreamError, match="cannot be sent on as JSON"):
        serialised(normalised)


def test_the_assembler_keeps_what_is_text_and_leaves_out_what_is_not() -> None:
    assembler = Assembler(Kind.CHAT)
    for chunk in [
        {
            "choices": [
                {"index": [1], "delta": {"role": "assistant", "content": [{"type": "text", "text": "a"}]}}
            ]
        },
        {
            "choices": [
                {"index": 0, "delta": {"content": 5, "tool_calls": [{"index": "x", "function": None}]}}
            ]
        },
        {"choices": 3},
        {"choices": [{"index": 0, "delta": {"content": "b", "reasoning": ["r"]}, "finish_reason": "stop"}]},
    ]:
        assembler.add(chunk)
    [choice] = serialisable(assembler.result())["choices"]
    assert choice["message"]["content"] == "ab"
    assert choice["finish_reason"] == "stop"
