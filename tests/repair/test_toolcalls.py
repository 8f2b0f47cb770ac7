"""Tool calls put in OpenAI's shape, delta by delta and in whole bodies (pure)."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.completion import normalise_completion
from sse_adapter.repair.fitting import fit
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.repair.toolcalls import ToolCalls, ToolTagSplitter, offers_tools, split_tool_tags
from sse_adapter.settings import Settings, Tags
from sse_adapter.sse.decoder import Event


def normalised(*deltas: list[dict[str, Any]]) -> tuple[list[list[dict[str, Any]]], Counter[str]]:
    repairs: Counter[str] = Counter()
    calls = ToolCalls(repairs)
    for delta in deltas:
        calls.normalise(delta)
    return list(deltas), repairs


def test_a_first_delta_gets_an_index_an_id_and_a_type() -> None:
    [[call]], repairs = normalised([{"function": {"name": "f", "arguments": ""}}])
    assert call["index"] == 0
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call["type"] == "function"
    assert repairs == Counter(tool_call_index_filled=1, tool_call_id_filled=1, tool_call_type_filled=1)


def test_later_deltas_lose_what_the_first_already_said() -> None:
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    again = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    nulls = {"index": 0, "id": None, "type": None, "function": {"name": None, "arguments": ""}}
    [[one], [two], [three]], repairs = normalised([first], [again], [nulls])
    assert one == {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert two == {"index": 0, "function": {"arguments": "{}"}}
    assert three == {"index": 0, "function": {"arguments": ""}}
    assert repairs == Counter(tool_call_repeat_dropped=2)


def test_a_name_that_comes_late_is_kept_once() -> None:
    deltas, _ = normalised(
        [{"index": 0, "id": "a", "type": "function", "function": {"arguments": ""}}],
        [{"index": 0, "function": {"name": "f", "arguments": "{"}}],
        [{"index": 0, "function": {"name": "f", "arguments": "}"}}],
    )
    assert deltas[1][0]["function"] == {"name": "f", "arguments": "{"}
    assert deltas[2][0]["function"] == {"arguments": "}"}


def test_an_id_inside_function_becomes_the_calls_id() -> None:
    """llama.cpp b5481 put it there, on every delta."""
    deltas, _ = normalised(
        [{"index": 0, "function": {"name": "f", "id": "abc", "arguments": "{"}}],
        [{"index": 0, "function": {"name": "f", "id": "abc", "arguments": "}"}}],
    )
    assert deltas[0][0] == {
        "index": 0,
        "id": "abc",
        "type": "function",
        "function": {"name": "f", "arguments": "{"},
    }
    assert deltas[1][0] == {"index": 0, "function": {"arguments": "}"}}


def test_calls_without_an_index_are_told_apart_by_id() -> None:
    deltas, _ = normalised(
        [{"id": "w", "function": {"name": "weather", "arguments": ""}}],
        [{"id": "t", "function": {"name": "time", "arguments": ""}}],
        [{"id": "w", "function": {"arguments": "1"}}, {"id": "t", "function": {"arguments": "2"}}],
    )
    assert [call["index"] for delta in deltas for call in delta] == [0, 1, 0, 1]


def test_without_index_or_id_a_delta_continues_the_last_call_unless_it_names_another() -> None:
    deltas, _ = normalised(
        [{"function": {"name": "f", "arguments": "{"}}],
        [{"function": {"name": "f", "arguments": "}"}}],
        [{"function": {"name": "g", "arguments": "{}"}}],
        [{"function": {"arguments": ""}}],
    )
    assert [delta[0]["index"] for delta in deltas] == [0, 0, 1, 1]
    assert "id" in deltas[2][0]
    assert "id" not in deltas[3][0]


@pytest.mark.parametrize(
    ("given", "sent"),
    [(None, ""), ({"city": "Paris"}, '{"city":"Paris"}'), ([1, 2], "[1,2]"), ("{}", "{}")],
)
def test_arguments_are_always_a_string(given: object, sent: str) -> None:
    [[call]], repairs = normalised(
        [{"index": 0, "id": "a", "type": "function", "function": {"arguments": given}}]
    )
    assert call["function"]["arguments"] == sent
    assert repairs["tool_call_arguments_string"] == (0 if isinstance(given, str) else 1)


def test_an_object_sent_again_is_sent_once() -> None:
    deltas, _ = normalised(
        [{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
        [{"index": 0, "function": {"arguments": {"x": 1}}}],
    )
    assert [delta[0]["function"]["arguments"] for delta in deltas] == ['{"x":1}', ""]


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> str:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body["choices"] = [{"index": index, "delta": delta, "finish_reason": finish}]
    return orjson.dumps(body).decode()


def repaired(events: list[str], **options: Any) -> tuple[list[dict[str, Any]], Counter[str]]:
    repairer = StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://x", **options))
    payloads = [payload for data in events for payload in repairer.repair(Event(data))] + repairer.finish()
    return [orjson.loads(payload) for payload in payloads], repairer.repairs


CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_a_stream_that_made_calls_finishes_with_tool_calls() -> None:
    chunks, repairs = repaired([chunk({"tool_calls": [CALL]}), chunk({}, "stop")])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert repairs["tool_call_finish_reason"] == 1


@pytest.mark.parametrize("finish", ["length", "tool_calls", "content_filter"])
def test_other_finish_reasons_after_calls_are_kept(finish: str) -> None:
    chunks, _ = repaired([chunk({"tool_calls": [CALL]}), chunk({}, finish)])
    assert chunks[-1]["choices"][0]["finish_reason"] == finish


def test_a_stream_without_calls_keeps_its_stop() -> None:
    chunks, _ = repaired([chunk({"content": "hi"}), chunk({}, "stop")])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_each_choice_has_its_own_calls() -> None:
    events = [chunk({"tool_calls": [CALL]}, index=0), chunk({}, "stop", index=1), chunk({}, "stop", index=0)]
    chunks, _ = repaired(events)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop", "tool_calls"]


def test_keep_sends_tool_calls_as_they_came() -> None:
    odd = chunk({"tool_calls": [{"function": {"name": "f", "arguments": None}}]})
    events = [odd, chunk({}, "stop")]
    chunks, repairs = repaired(events, tool_calls="keep")
    assert chunks == [orjson.loads(data) for data in events]
    assert not any(kind.startswith("tool_call") for kind in repairs)


BLOCKS = [
    'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "parameters": {"x": [1]}}'
    "</tool_call>done",
    "<tool_call>not json</tool_call> and <tool_call>[1]</tool_call> stay text",
    'tags <tool_call in text, a <tool_call> never closed {"name": "x"}',
    "no tags at all, only < and </ and <tool",
]


@pytest.mark.parametrize("text", BLOCKS)
def test_tag_blocks_split_the_same_at_every_cut(text: str) -> None:
    whole = split_tool_tags(text)
    for cut in range(len(text) + 1):
        splitter = ToolTagSplitter(1 << 20)
        first, calls = splitter.feed(text[:cut])
        second, more = splitter.feed(text[cut:])
        assert (first + second + splitter.flush(), calls + more) == whole


def test_what_a_block_becomes() -> None:
    assert split_tool_tags(BLOCKS[1]) == (
        "done",
        [{"name": "a", "arguments": "{}"}, {"name": "b", "arguments": '{"x":[1]}'}],
    )
    assert split_tool_tags(BLOCKS[0])[0] == "I will check.\n"


@pytest.mark.parametrize("text", BLOCKS[2:])
def test_what_does_not_parse_stays_content_untouched(text: str) -> None:
    assert split_tool_tags(text) == (text, [])


def test_a_block_longer_than_the_limit_goes_out_as_text() -> None:
    splitter = ToolTagSplitter(100)
    said, calls = splitter.feed("<tool_call>" + "x" * 150)
    assert (said, calls) == ("<tool_call>" + "x" * 150, [])
    assert splitter.feed("</tool_call>") == ("</tool_call>", [])


@settings(deadline=None, max_examples=300)
@given(
    st.lists(
        st.sampled_from([*BLOCKS, "<", "tool_call>", "</tool_", "call>", "{", '"name"', " text "]), max_size=8
    ),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_any_split_of_any_text_gives_the_same_calls_and_text(parts: list[str], points: list[int]) -> None:
    text = "".join(parts)
    edges = sorted({0, len(text), *(point % (len(text) + 1) for point in points)})
    splitter = ToolTagSplitter(1 << 20)
    said, calls = "", []
    for start, end in itertools.pairwise(edges):
        more_said, more_calls = splitter.feed(text[start:end])
        said, calls = said + more_said, calls + more_calls
    assert (said + splitter.flush(), calls) == split_tool_tags(text)


def test_tags_cut_across_chunks_become_calls_in_the_stream() -> None:
    pieces = ["Sure. <tool_", 'call>{"name": "f", "argu', 'ments": {"a": 1}}</tool', "_call> ok"]
    chunks, repairs = repaired(
        [chunk({"content": p}) for p in pieces] + [chunk({}, "stop")], tool_call_tags="split"
    )
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls") or []]
    assert text == "Sure.  ok"
    assert [(call["index"], call["type"], call["function"]) for call in calls] == [
        (0, "function", {"name": "f", "arguments": '{"a":1}'})
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert repairs["tool_call_tags_split"] == 1


def test_a_block_still_open_when_the_stream_ends_goes_out_as_text() -> None:
    chunks, _ = repaired([chunk({"content": "a <tool_call>{"})], tool_call_tags="split")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "a <tool_call>{"


def test_a_block_closed_in_the_last_chunk_without_finish_is_a_call() -> None:
    chunks, _ = repaired(
        [chunk({"content": '<tool_call>{"name": "f"}'}), chunk({"content": "</tool_call>"})],
        tool_call_tags="split",
    )
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [call["function"] for call in calls] == [{"name": "f", "arguments": "{}"}]


def test_tag_calls_follow_the_servers_own_calls() -> None:
    events = [
        chunk({"tool_calls": [CALL]}),
        chunk({"content": '<tool_call>{"name": "g"}</tool_call>'}, "stop"),
    ]
    chunks, _ = repaired(events, tool_call_tags="split")
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [(call["index"], call["function"]["name"]) for call in calls] == [(0, "f"), (1, "g")]


@pytest.mark.parametrize("size", range(3000, 3040))
def test_long_arguments_split_over_deltas_of_one_call_and_fit_exactly(size: int) -> None:
    arguments = '{"a": "' + "é" * size + '"}'
    call = {"index": 2, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": arguments}}
    body = orjson.loads(chunk({"role": "assistant", "tool_calls": [call]}, "tool_calls"))
    payloads = fit(body, 1500, Counter())
    assert all(len(payload) + 6 <= 1500 for payload in payloads)
    calls = [orjson.loads(p)["choices"][0]["delta"]["tool_calls"][0] for p in payloads]
    assert calls[0]["id"] == "call_9"
    assert calls[0]["function"]["name"] == "f"
    assert all(
        later == {"index": 2, "function": {"arguments": later["function"]["arguments"]}}
        for later in calls[1:]
    )
    assert "".join(c["function"]["arguments"] for c in calls) == arguments
    finishes = [orjson.loads(p)["choices"][0]["finish_reason"] for p in payloads]
    assert finishes == [None] * (len(payloads) - 1) + ["tool_calls"]
    assert orjson.loads(payloads[0])["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in orjson.loads(p)["choices"][0]["delta"] for p in payloads[1:])


TAG_BLOCK = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def test_700_tag_calls_in_one_event_go_out_in_a_few_lines_that_fit() -> None:
    """The upstream's line fits; the calls made of it are longer (ids, types,
    escaped arguments) and go out side by side over as few lines as fit."""
    data = chunk({"content": "Checking." + TAG_BLOCK * 700})
    assert len(data) + 6 <= 65000
    chunks, repairs = repaired([data, chunk({}, "stop")], tool_call_tags="split")
    lines = [len(orjson.dumps(c)) + 6 for c in chunks]
    assert all(line <= 65000 for line in lines)
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [call["index"] for call in calls] == list(range(700))
    assert {call["function"]["arguments"] for call in calls} == {'{"city":"Paris"}'}
    assert len(chunks) - 1 < 5  # a few lines, not one per call (the last chunk: the finish)
    assert chunks[0]["choices"][0]["delta"]["content"] == "Checking."
    assert repairs["long_line_split"] == 1


def parts_of(calls: list[dict[str, Any]], limit: int = 1500) -> list[list[dict[str, Any]]]:
    body = orjson.loads(chunk({"role": "assistant", "tool_calls": calls}, "tool_calls"))
    payloads = fit(body, limit, Counter())
    assert all(len(payload) + 6 <= limit for payload in payloads)
    return [orjson.loads(p)["choices"][0]["delta"]["tool_calls"] for p in payloads]


def test_calls_without_arguments_are_split_between_lines_too() -> None:
    calls = [
        {"index": n, "id": f"call_{n}", "type": "function", "function": {"name": "f" * 40}} for n in range(60)
    ]
    parts = parts_of(calls)
    assert 1 < len(parts) < 60
    assert [call for part in parts for call in part] == calls


def test_no_line_holds_two_pieces_of_one_call() -> None:
    long = {
        "index": 0,
        "id": "call_0",
        "type": "function",
        "function": {"name": "f", "arguments": "x" * 4000},
    }
    short = {"index": 1, "id": "call_1", "type": "function", "function": {"name": "g", "arguments": "{}"}}
    parts = parts_of([long, short])
    assert all(len({call["index"] for call in part}) == len(part) for part in parts)
    assert "".join(
        call["function"]["arguments"] for part in parts for call in part if call["index"] == 0
    ) == ("x" * 4000)
    assert parts[-1][-1] == short  # the short call rides with the last piece of the long one


def test_a_stream_holds_an_open_block_only_4_kib_past_its_tag() -> None:
    """Prose that opens a tag and never closes it goes on as text, not at the end of the answer."""
    fix = StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), Settings("http://x", tool_call_tags=Tags.SPLIT))
    events = [chunk({"content": "a <tool_call>{"}), *[chunk({"content": "x" * 100})] * 50]
    before_the_end = [payload for data in events for payload in fix.repair(Event(data))]
    text = "".join(orjson.loads(p)["choices"][0]["delta"].get("content") or "" for p in before_the_end)
    assert text == "a <tool_call>{" + "x" * 5000
    assert not fix.finish()


def test_a_block_that_closes_within_the_hold_is_a_call() -> None:
    arguments = '{"text": "' + "y" * 4000 + '"}'
    pieces = ["<tool_call>", '{"name": "f", "arguments": ', *arguments, "}</tool_call>"]
    chunks, _ = repaired([chunk({"content": piece}) for piece in pieces], tool_call_tags="split")
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls") or []]
    assert [call["function"] for call in calls] == [
        {"name": "f", "arguments": '{"text":"' + "y" * 4000 + '"}'}
    ]


@pytest.mark.parametrize(
    ("request_fields", "offered"),
    [
        pytest.param({"tools": [{"type": "function"}]}, True, id="tools"),
        pytest.param({"tools": [{"type": "function"}], "tool_choice": "required"}, True, id="required"),
        pytest.param(
            {"tools": [{"type": "function"}], "tool_choice": {"type": "function"}}, True, id="named"
        ),
        pytest.param({"tools": [{"type": "function"}], "tool_choice": "none"}, False, id="none"),
        pytest.param({}, False, id="no-tools"),
        pytest.param({"tools": []}, False, id="empty"),
        pytest.param({"tools": None}, False, id="null"),
    ],
)
def test_a_request_offers_tools_unless_it_has_none_or_says_none(
    request_fields: dict[str, Any], offered: bool
) -> None:
    assert offers_tools(request_fields) is offered


def test_without_tools_offered_tags_stay_text_in_a_stream_and_a_body() -> None:
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    settings = Settings("http://x", tool_call_tags=Tags.SPLIT)
    fix = StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), settings, offers_tools=False)
    data = chunk({"content": text}, "stop")
    assert fix.repair(Event(data)) == [data.encode()]
    body = {"choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}]}
    normalised = normalise_completion(body, Kind.CHAT, settings, 1, offers_tools=False)
    assert normalised["choices"][0]["message"] == {"content": text}
