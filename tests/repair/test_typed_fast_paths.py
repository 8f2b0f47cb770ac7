"""The common typed events (Responses and Messages text deltas) go out as they came."""

from __future__ import annotations

from sse_adapter.repair.messages import MessagesRepairer
from sse_adapter.repair.responses import ResponsesRepairer
from sse_adapter.repair.typed import typed_frame
from sse_adapter.sse.decoder import Event


def test_a_messages_text_delta_goes_out_byte_for_byte() -> None:
    repairer = MessagesRepairer(65000, collect_text=True)
    data = '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}'
    assert repairer.repair(Event(data, "content_block_delta")) == [
        b"event: content_block_delta\ndata: " + data.encode() + b"\n\n"
    ]
    assert repairer.turns is not None
    assert repairer.turns.first.content == ["hi"]


def test_a_messages_delta_of_an_unknown_shape_goes_out_as_it_came() -> None:
    repairer = MessagesRepairer(65000)
    data = '{"type": "content_block_delta", "index": 0, "delta": {"type": ["odd"]}}'
    assert repairer.repair(Event(data, "content_block_delta")) == [
        b"event: content_block_delta\ndata: " + data.encode() + b"\n\n"
    ]


def test_a_responses_delta_whose_number_is_due_goes_out_byte_for_byte() -> None:
    repairer = ResponsesRepairer("m", 65000, collect_text=True)
    created = '{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"m"}}'
    repairer.repair(Event(created, "response.created"))
    due = '{"type": "response.output_text.delta", "sequence_number": 1, "delta": "hi"}'
    assert repairer.repair(Event(due, "response.output_text.delta")) == [
        b"event: response.output_text.delta\ndata: " + due.encode() + b"\n\n"
    ]
    late = '{"type": "response.output_text.delta", "sequence_number": 7, "delta": "ho"}'
    [renumbered] = repairer.repair(Event(late, "response.output_text.delta"))
    assert b'"sequence_number":2' in renumbered
    assert repairer.turns is not None
    assert repairer.turns.first.content == ["hi", "ho"]
    assert repairer.repairs["sequence_renumbered"] == 1


def test_a_type_that_could_break_the_frame_gets_no_event_line_every_time() -> None:
    for _ in range(2):  # the second time from the cache
        assert typed_frame("bad\ntype", b"{}") == b"data: {}\n\n"
        assert typed_frame("ok", b"{}") == b"event: ok\ndata: {}\n\n"


def test_the_adapters_own_events_are_no_renumbering_of_the_upstreams() -> None:
    repairer = ResponsesRepairer("m", 65000)
    repairer.keepalive()  # its own response.created, then a keepalive
    repairer.keepalive()
    created = '{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"m"}}'
    assert repairer.repair(Event(created, "response.created")) == []  # its own went first
    due = '{"type": "response.output_text.delta", "sequence_number": 1, "output_index": 0, "delta": "a"}'
    [frame] = repairer.repair(Event(due, "response.output_text.delta"))
    assert b'"sequence_number":3' in frame  # after created 0, keepalives 1 and 2
    assert repairer.repairs["sequence_renumbered"] == 1  # this upstream event, not the adapter's three
