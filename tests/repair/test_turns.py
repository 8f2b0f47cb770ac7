"""What a stream keeps to count what each choice generated (repair/turns.py), and the assistant
turn it renders back for the chat template."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.repair.turns import MAX_CHOICES, Turn, Turns
from sse_adapter.settings import Settings
from sse_adapter.sse.decoder import Event


def chunk(index: int = 0, finish: str | None = None, **delta: Any) -> Event:
    choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
    return Event(data=orjson.dumps({"id": "c", "model": "m", "choices": [choice]}).decode())


def collected(*events: Event) -> Turns:
    repairer = StreamRepairer(
        StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://u"), collect_text=True
    )
    for event in events:
        repairer.repair(event)
    assert repairer.turns is not None
    return repairer.turns


def test_each_choice_keeps_its_own_text_reasoning_and_calls() -> None:
    call = {"index": 0, "id": "x", "function": {"name": "get_", "arguments": '{"a"'}}
    more = {"index": 0, "function": {"name": "weather", "arguments": ": 1}"}}
    turns = collected(
        chunk(content="He"),
        chunk(1, content="Bo"),
        chunk(content="llo"),
        chunk(1, reasoning_content="why"),
        chunk(1, tool_calls=[call]),
        chunk(1, tool_calls=[more]),
    )
    assert turns.of(0).message() == {"role": "assistant", "content": "Hello"}
    second = turns.of(1).message()
    assert second["content"] == "Bo"
    assert second["reasoning_content"] == "why"
    assert second["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"a": 1}'}


@pytest.mark.parametrize(
    ("stop_reason", "finish", "content", "stop_token"),
    [
        pytest.param(None, "stop", "Hi", True, id="eos"),
        pytest.param(7, "stop", "Hi", True, id="stop-token-id"),
        pytest.param("tiny", "stop", "Hitiny", False, id="stop-string"),
        pytest.param(None, "length", "Hi", False, id="length"),
        pytest.param(None, "tool_calls", "Hi", True, id="tool-calls"),
        pytest.param(True, "stop", "Hi", True, id="a-bool-is-no-token-id"),
    ],
)
def test_how_a_choice_ended_decides_its_stop_token_and_stop_string(
    stop_reason: object, finish: str, content: str, stop_token: bool
) -> None:
    last = {"index": 0, "delta": {}, "finish_reason": finish, "stop_reason": stop_reason}
    turns = collected(chunk(content="Hi"), Event(data=orjson.dumps({"id": "c", "choices": [last]}).decode()))
    assert turns.first.message()["content"] == content
    assert turns.first.ended_on_stop_token is stop_token


def test_a_finish_in_the_same_chunk_as_the_last_text_is_kept() -> None:
    turns = collected(chunk(content="m a ", finish="stop"))
    assert turns.first.content == ["m a "]
    assert turns.first.finish_reason == "stop"


def test_tgi_finish_reasons_are_mapped_before_they_are_kept() -> None:
    assert collected(chunk(content="x", finish="eos_token")).first.ended_on_stop_token


def test_a_stop_string_already_in_the_text_is_not_added_again() -> None:
    turn = Turn(content=["Hi tiny"], finish_reason="stop", stop_reason="tiny")
    assert turn.message(stop_shown=True)["content"] == "Hi tiny"
    assert turn.message()["content"] == "Hi tinytiny"


def test_a_continued_turn_starts_with_the_requests_own_text() -> None:
    turn = Turn(content=[" a tiny"], finish_reason="stop")
    assert turn.message("Hello! I am")["content"] == "Hello! I am a tiny"


@pytest.mark.parametrize(
    ("way", "expected"),
    [
        pytest.param("field", {"content": "Hi", "reasoning_content": "hm", "reasoning": "hm"}, id="field"),
        pytest.param("raw", {"content": "hm</think>Hi"}, id="raw"),
        pytest.param("none", {"content": "Hi"}, id="none"),
    ],
)
def test_reasoning_beside_an_answer_renders_three_ways(way: str, expected: dict[str, str]) -> None:
    turn = Turn(content=["Hi"], reasoning=["h", "m"])
    assert turn.reasons_aside
    assert turn.message(reasoning=way) == {"role": "assistant", **expected}


def test_reasoning_that_never_closed_is_the_whole_text() -> None:
    turn = Turn(reasoning=["thinking", " on"], finish_reason="length")
    assert not turn.reasons_aside
    assert turn.message() == {"role": "assistant", "content": "thinking on"}


def test_an_upstream_that_numbers_too_many_choices_gets_no_count() -> None:
    turns = collected(*(chunk(index, content="x") for index in range(MAX_CHOICES + 1)))
    assert turns.overflowed
    assert len(turns.by_choice) == MAX_CHOICES
