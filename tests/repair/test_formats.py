"""The Responses and Messages repairers, pure: numbering, ids, ends, failures, splits, usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sse_adapter.errors import (
    LineTooLong,
    ShuttingDown,
    TooManyStreams,
    UpstreamDisconnected,
    UpstreamReported,
    UpstreamTimeout,
)
from sse_adapter.repair import messages, responses
from sse_adapter.repair.messages import MessagesRepairer, stream_error_type
from sse_adapter.repair.responses import ResponseIds, ResponsesRepairer, failure_code
from sse_adapter.sse.decoder import Event, SSEDecoder
from tests.formats_fake import messages_stream, responses_delta, responses_head, responses_stream, typed


def events(parts: list[bytes]) -> list[Event]:
    return SSEDecoder(1 << 24).feed(b"".join(parts))


def frames(units: list[bytes]) -> list[dict[str, Any]]:
    """The data of each frame the repairer made, checking its ``event:`` line names its type."""
    found = []
    for frame in b"".join(units).split(b"\n\n")[:-1]:
        name, data = frame.split(b"\n")
        body = orjson.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + body["type"].encode()
        found.append(body)
    return found


def run(repairer: ResponsesRepairer | MessagesRepairer, parts: list[bytes]) -> list[bytes]:
    return [unit for event in events(parts) for unit in repairer.repair(event)]


def test_a_clean_responses_stream_goes_out_byte_for_byte() -> None:
    parts = responses_stream(["a", "b"])
    repairer = ResponsesRepairer("m", 65000)
    out = run(repairer, parts) + repairer.finish()
    assert b"".join(out) == b"".join(parts)
    assert repairer.finished
    assert repairer.saw_usage
    assert not repairer.repairs


def test_gaps_and_repeats_in_the_upstreams_numbers_are_renumbered() -> None:
    parts = responses_stream(["a", "b", "c"])
    bodies = [orjson.loads(event.data) for event in events(parts)]
    bodies[5]["sequence_number"] = 4  # a repeat
    bodies[6]["sequence_number"] = 40  # a jump
    repairer = ResponsesRepairer("m", 65000)
    got = frames(run(repairer, [typed(body) for body in bodies]))
    assert [body["sequence_number"] for body in got] == list(range(len(bodies)))
    assert repairer.repairs["sequence_renumbered"] >= 2


def test_keepalives_before_the_first_event_start_with_the_adapters_own_created() -> None:
    repairer = ResponsesRepairer("m", 65000, alias="my-model")
    beats = frames([repairer.keepalive(), repairer.keepalive()])
    assert [body["type"] for body in beats] == ["response.created", "keepalive", "keepalive"]
    ours = beats[0]["response"]["id"]
    assert beats[0]["response"]["model"] == "my-model"
    got = frames(run(repairer, responses_stream(["a"])))
    assert "response.created" not in [body["type"] for body in got]  # the upstream's: not relayed
    assert {body["response"]["id"] for body in got if "response" in body} == {ours}
    assert [body["sequence_number"] for body in beats + got] == list(range(len(beats) + len(got)))
    assert repairer.made_id == (ours, "resp_up")


def test_a_failure_before_anything_went_out_is_created_then_failed() -> None:
    repairer = ResponsesRepairer("m", 65000)
    got = frames([repairer.failure(UpstreamTimeout("slow"))])
    assert [body["type"] for body in got] == ["response.created", "response.failed"]
    assert got[1]["response"]["error"] == {"code": "server_error", "message": "slow"}
    assert got[1]["response"]["status"] == "failed"
    assert [body["sequence_number"] for body in got] == [0, 1]


def test_an_event_too_long_to_split_fails_and_takes_no_number() -> None:
    item = {"type": "response.output_item.added", "sequence_number": 4, "item": {"id": "x" * 3000}}
    repairer = ResponsesRepairer("m", 1024)
    before = frames(run(repairer, responses_head()))
    with pytest.raises(LineTooLong):
        run(repairer, [typed(item)])
    failed = frames([repairer.failure(LineTooLong("too long"))])
    assert failed[0]["sequence_number"] == before[-1]["sequence_number"] + 1


def test_a_stream_without_its_terminal_event_is_no_answer() -> None:
    repairer = ResponsesRepairer("m", 65000)
    run(repairer, [*responses_head(), responses_delta("a", 4)])
    with pytest.raises(UpstreamDisconnected, match=r"response\.completed"):
        repairer.finish()


def test_missing_usage_is_held_and_filled_from_the_count() -> None:
    repairer = ResponsesRepairer("m", 65000, collect_text=True)
    out = run(repairer, responses_stream(["ab", "c"], usage=None))
    assert "response.completed" not in [body["type"] for body in frames(out)]
    assert repairer.turns is not None
    assert repairer.turns.first.content == ["ab", "c"]
    last = frames(repairer.finish(usage={"prompt_tokens": 5, "completion_tokens": 2}))
    assert last[0]["type"] == "response.completed"
    assert last[0]["response"]["usage"]["total_tokens"] == 7
    assert last[0]["sequence_number"] == frames(out)[-1]["sequence_number"] + 1


@given(st.text(min_size=1, max_size=3000), st.integers(min_value=300, max_value=2000))
def test_a_long_delta_splits_into_pieces_that_fit_and_join_to_it(text: str, limit: int) -> None:
    repairer = ResponsesRepairer("m", max(limit, 1024))
    out = run(repairer, [*responses_head(), responses_delta(text, 4)])
    deltas = [body for body in frames(out) if body["type"] == "response.output_text.delta"]
    assert "".join(body["delta"] for body in deltas) == text
    for unit in out:
        assert all(len(line) <= max(limit, 1024) for line in unit.split(b"\n"))
    numbers = [body["sequence_number"] for body in frames(out)]
    assert numbers == list(range(len(numbers)))


CODES = [
    pytest.param(
        UpstreamReported("This model's maximum context length is 2048 tokens."),
        "context_length_exceeded",
        id="vllm-context",
    ),
    pytest.param(
        UpstreamReported("the request exceeds the available context size, try increasing it"),
        "context_length_exceeded",
        id="llama-server-context",
    ),
    pytest.param(
        UpstreamReported("x", upstream_code="context_length_exceeded"), "context_length_exceeded", id="coded"
    ),
    pytest.param(UpstreamReported("busy", status=503), "rate_limit_exceeded", id="503"),
    pytest.param(UpstreamReported("the server's queue is full"), "rate_limit_exceeded", id="queue-full"),
    pytest.param(TooManyStreams("limit"), "rate_limit_exceeded", id="adapter-limit"),
    pytest.param(ShuttingDown("bye"), "rate_limit_exceeded", id="drain"),
    pytest.param(UpstreamReported("bad field", status=400), "invalid_request_error", id="400"),
    pytest.param(UpstreamDisconnected("cut"), "server_error", id="cut"),
    pytest.param(UpstreamTimeout("slow"), "server_error", id="timeout"),
    pytest.param(UpstreamReported("CUDA error"), "server_error", id="crash"),
]


@pytest.mark.parametrize(("error", "code"), CODES)
def test_failure_codes_are_the_ones_codex_acts_on(error: Any, code: str) -> None:
    assert failure_code(error) == code


def test_a_full_servers_failure_asks_the_client_to_wait() -> None:
    repairer = ResponsesRepairer("m", 65000)
    got = frames([repairer.failure(UpstreamReported("busy", status=503))])
    assert got[-1]["response"]["error"]["message"].endswith("Please try again in 10s.")


def test_response_ids_are_bounded_and_forget_the_oldest_first() -> None:
    ids = ResponseIds(size=2)
    for n in range(3):
        ids.add(f"ours{n}", f"up{n}")
    assert [ids.upstream_of(f"ours{n}") for n in range(3)] == [None, "up1", "up2"]
    assert ids.upstream_of(None) is None


def test_a_clean_messages_stream_goes_out_byte_for_byte() -> None:
    parts = messages_stream(["a", "b"])
    repairer = MessagesRepairer(65000)
    out = run(repairer, parts) + repairer.finish()
    assert b"".join(out) == b"".join(parts)
    assert repairer.stream_id == "msg_up"
    assert repairer.saw_usage


def test_messages_missing_output_usage_holds_the_end_and_fills_it() -> None:
    repairer = MessagesRepairer(65000)
    out = frames(run(repairer, messages_stream(["a"], output_tokens=None)))
    assert [body["type"] for body in out][-1] == "content_block_stop"
    end = frames(repairer.finish(usage={"prompt_tokens": 5, "completion_tokens": 2}))
    assert [body["type"] for body in end] == ["message_delta", "message_stop"]
    assert end[0]["usage"] == {"output_tokens": 2}  # the server's own input count (7) stands in message_start


def test_messages_without_message_stop_is_no_answer() -> None:
    repairer = MessagesRepairer(65000)
    run(repairer, messages_stream(["a"])[:-1])
    with pytest.raises(UpstreamDisconnected, match="message_stop"):
        repairer.finish()


ERROR_TYPES = [
    pytest.param(UpstreamReported("full", upstream_type="overloaded_error"), "overloaded_error", id="theirs"),
    pytest.param(UpstreamReported("busy", status=503), "overloaded_error", id="503"),
    pytest.param(UpstreamTimeout("slow"), "timeout_error", id="timeout"),
    pytest.param(UpstreamDisconnected("cut"), "api_error", id="cut"),
]


@pytest.mark.parametrize(("error", "kind"), ERROR_TYPES)
def test_in_band_error_types(error: Any, kind: str) -> None:
    assert stream_error_type(error) == kind
    frame = MessagesRepairer(65000).failure(error)
    assert frame.startswith(b"event: error\ndata: ")
    assert orjson.loads(frame.split(b"data: ")[1])["error"]["type"] == kind


def test_responses_requests_become_chat_turns_for_the_tokenizer() -> None:
    fields = {
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    }
    chat = responses.chat_request(fields)
    assert [turn["role"] for turn in chat["messages"]] == ["system", "user", "assistant", "tool"]
    assert chat["messages"][1]["content"] == "hi"
    assert chat["tools"][0]["function"]["name"] == "f"


def test_messages_requests_become_chat_turns_for_the_tokenizer() -> None:
    fields = {
        "model": "m",
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    }
    chat = messages.chat_request(fields)
    assert [turn["role"] for turn in chat["messages"]] == ["system", "user", "assistant", "tool"]
    assert chat["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object"}


def test_the_indexes_llama_server_leaves_out_are_filled_in() -> None:
    item = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
    parts = [
        typed({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}),
        typed({"type": "response.output_item.added", "item": item}),
        typed({"type": "response.content_part.added", "item_id": "msg_1", "part": {"type": "output_text"}}),
        typed({"type": "response.output_text.delta", "item_id": "msg_1", "delta": "hi"}),
        typed({"type": "response.output_item.added", "item": {**item, "id": "msg_2"}}),
        typed({"type": "response.output_text.delta", "item_id": "msg_2", "delta": "!"}),
    ]
    got = frames(run(ResponsesRepairer("m", 65000), parts))
    assert [body.get("output_index") for body in got] == [None, 0, 0, 0, 1, 1]
    assert [body.get("content_index") for body in got] == [None, None, 0, 0, None, 0]
    assert [body["sequence_number"] for body in got] == list(range(6))


@pytest.mark.parametrize(
    "repairer", [ResponsesRepairer("m", 65000), MessagesRepairer(65000)], ids=["responses", "messages"]
)
def test_an_openai_error_line_without_a_type_is_the_servers_error(repairer: Any) -> None:
    line = b'data: {"error": {"message": "CUDA out of memory", "type": "server_error", "code": 500}}\n\n'
    with pytest.raises(UpstreamReported, match="CUDA out of memory"):
        run(repairer, [line])
