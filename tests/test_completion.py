"""Whole non-stream bodies: usage found wherever the server put its counts (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from sse_adapter.chunks import Kind
from sse_adapter.completion import Assembler, normalise_completion, usage_of
from sse_adapter.settings import Settings


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
