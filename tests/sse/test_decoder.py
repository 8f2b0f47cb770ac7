"""The SSE decoder against the WHATWG rules, at every split, and with its bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sse_adapter.errors import EventTooLarge
from sse_adapter.sse.decoder import Event, SSEDecoder
from sse_adapter.sse.encoder import comment, frame


def decode(*chunks: bytes, flush: bool = False) -> list[Event]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.flush() if flush else events


CASES = [
    pytest.param(b"data: x\n\n", [Event("x")], id="data-with-space"),
    pytest.param(b"data:x\n\n", [Event("x")], id="data-without-space"),
    pytest.param(b"data:  x\n\n", [Event(" x")], id="only-one-space-stripped"),
    pytest.param(b"data: a\ndata: b\n\n", [Event("a\nb")], id="data-lines-joined-with-lf"),
    pytest.param(b"data: a\r\n\r\ndata: b\r\n\r\n", [Event("a"), Event("b")], id="crlf"),
    pytest.param(b"data: a\r\rdata: b\r\r", [Event("a"), Event("b")], id="cr-only"),
    pytest.param(b"data: a\r\ndata: b\r\n\n", [Event("a\nb")], id="mixed-endings"),
    pytest.param(b"\xef\xbb\xbfdata: x\n\n", [Event("x")], id="bom-stripped"),
    pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n", [Event("y")], id="only-one-bom-stripped"),
    pytest.param(b": ping - 2024-01-01\r\n\r\ndata: x\n\n", [Event("x")], id="comment-ignored"),
    pytest.param(b":\n\ndata: x\n\n", [Event("x")], id="empty-comment"),
    pytest.param(
        b"event: add\ndata: x\n\ndata: y\n\n", [Event("x", "add"), Event("y")], id="event-type-resets"
    ),
    pytest.param(
        b"id: 7\ndata: x\n\ndata: y\n\n",
        [Event("x", last_event_id="7"), Event("y", last_event_id="7")],
        id="id-persists",
    ),
    pytest.param(b"id: 1\x002\ndata: x\n\n", [Event("x")], id="id-with-nul-ignored"),
    pytest.param(b"id\ndata: x\n\n", [Event("x")], id="id-without-value-clears"),
    pytest.param(b"retry: 300\ndata: x\n\n", [Event("x")], id="retry"),
    pytest.param(b"foo: bar\ndata: x\n\n", [Event("x")], id="unknown-field-ignored"),
    pytest.param(b"data\n\n", [Event("")], id="field-without-colon"),
    pytest.param(b"event: x\nid: 2\n\n", [], id="no-data-no-event"),
    pytest.param(b"data: \xe4\xbd\xa0\xe5\xa5\xbd\n\n", [Event("你好")], id="utf8"),
    pytest.param(b"data: \xff\xfe\n\n", [Event("\ufffd\ufffd")], id="invalid-utf8-replaced"),
    pytest.param("data: a\u2028b\x85c\n\n".encode(), [Event("a\u2028b\x85c")], id="only-cr-lf-end-lines"),
    # WHATWG HTML 9.2.6, the examples of the section
    pytest.param(b"data: YHOO\ndata: +2\ndata: 10\n\n", [Event("YHOO\n+2\n10")], id="whatwg-stock"),
    pytest.param(
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        [Event("first event", last_event_id="1"), Event("second event"), Event(" third event")],
        id="whatwg-ids",
    ),
    pytest.param(b"data\n\ndata\ndata\n\ndata:", [Event(""), Event("\n")], id="whatwg-empty-data"),
    pytest.param(b"data:test\n\ndata: test\n\n", [Event("test"), Event("test")], id="whatwg-space"),
]


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_rules(stream: bytes, expected: list[Event]) -> None:
    assert decode(stream) == expected


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_every_split_offset_gives_the_same_events(stream: bytes, expected: list[Event]) -> None:
    for offset in range(len(stream) + 1):
        assert decode(stream[:offset], stream[offset:]) == expected, offset


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_byte_by_byte(stream: bytes, expected: list[Event]) -> None:
    assert decode(*(stream[i : i + 1] for i in range(len(stream)))) == expected


def test_retry_sets_the_reconnection_time_and_ignores_non_digits() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: 300\n\nretry: 3s\n\n")
    assert decoder.retry == 300


def test_crlf_split_across_reads_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [Event("a\nb")]


def test_flush_keeps_an_unterminated_last_event() -> None:
    # The spec drops it; a relay must not lose the last tokens (see flush's docstring).
    assert decode(b"data: a\n\ndata: b", flush=True) == [Event("a"), Event("b")]
    assert decode(b"data: a\n\ndata: b\n", flush=True) == [Event("a"), Event("b")]
    assert decode(b"data: a\n\n", flush=True) == [Event("a")]


def test_a_bom_alone_in_the_first_reads_is_still_stripped() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [Event("x")]
    assert decode(b"\xef", b"data: x\n\n") == []  # not a BOM: '\ufffddata' is an unknown field


def test_a_line_past_the_bound_raises_and_keeps_what_came_before() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    with pytest.raises(EventTooLarge) as raised:
        decoder.feed(b"data: ok\n\ndata: " + b"x" * 2000)
    assert raised.value.completed == [Event("ok")]
    assert raised.value.code == "event_too_large"


def test_a_line_arriving_in_pieces_is_bounded_too() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    decoder.feed(b"data: " + b"x" * 1000)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"x" * 100)


def test_many_data_lines_of_one_event_are_bounded_together() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    for _ in range(9):
        decoder.feed(b"data: " + b"x" * 100 + b"\n")
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"x" * 100 + b"\n")


def test_the_bound_resets_with_each_event() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    for _ in range(100):
        assert decoder.feed(b"data: " + b"x" * 900 + b"\n\n") == [Event("x" * 900)]


def test_a_long_line_in_many_reads_is_joined_once() -> None:
    decoder = SSEDecoder()
    pieces = [b"data: "] + [b"y" * 1000] * 5000 + [b"\n\n"]
    events = [event for piece in pieces for event in decoder.feed(piece)]
    assert events == [Event("y" * 5_000_000)]


single_line = st.text().filter(lambda text: "\r" not in text and "\n" not in text)


@given(single_line)
def test_encode_then_decode_is_the_identity(payload: str) -> None:
    assert decode(frame(payload.encode())) == [Event(payload)]


@given(st.lists(single_line, max_size=5))
def test_comments_between_frames_change_nothing(payloads: list[str]) -> None:
    stream = b"".join(comment("keep-alive") + frame(payload.encode()) for payload in payloads)
    assert decode(stream) == [Event(payload) for payload in payloads]


@pytest.mark.parametrize("bad", [b"a\nb", b"a\rb"])
def test_the_encoder_refuses_a_line_break(bad: bytes) -> None:
    with pytest.raises(ValueError, match="single line"):
        frame(bad)


TYPED = [
    pytest.param(b'event: response.output_text.delta\ndata: {"delta":"a"}\n\n', id="one"),
    pytest.param(b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n", id="two"),
    pytest.param(b"event: \ndata: 1\n\n", id="empty-name"),
    pytest.param(b"event: a\ndata: 1\ndata: 2\n\n", id="two-data-lines"),
    pytest.param(b"event: a\r\ndata: 1\r\n\r\n", id="crlf"),
    pytest.param(b"event: a\nid: 7\ndata: 1\n\n", id="with-id"),
    pytest.param(b"event: a\n\n", id="no-data"),
    pytest.param(b"event: a\ndata: 1\n\nevent: b\n: ping\ndata: 2\n\n", id="comment-inside"),
]


@pytest.mark.parametrize("stream", TYPED)
def test_typed_events_read_whole_decode_as_line_by_line(stream: bytes) -> None:
    """The fast path for `event:` + `data:` reads gives what the spec's line-by-line reading gives."""
    warm = b"event: x\ndata: {}\n\n"  # the fast path runs once the stream has started
    whole = SSEDecoder(1 << 20)
    by_byte = SSEDecoder(1 << 20)
    got_whole = whole.feed(warm) + whole.feed(stream)
    got_bytes = [
        event
        for piece in [warm, *(stream[i : i + 1] for i in range(len(stream)))]
        for event in by_byte.feed(piece)
    ]
    assert got_whole == got_bytes


# Typed streams' reads (Responses, Messages): an `event:` line and a `data:` line
# each, which the decoder takes whole; any other shape goes line by line.
_TYPED_BLOCKS = st.sampled_from(
    [
        b'event: response.output_text.delta\ndata: {"delta":"x"}\n\n',
        b'event: content_block_delta\ndata: {"text":"\xe4\xbd\xa0"}\n\n',
        b"event: \ndata: x\n\n",
        b"event:  spaced\ndata: x\n\n",
        b"event:nospace\ndata: x\n\n",
        b"event: a\ndata:x\n\n",
        b"event: a\ndata: \n\n",
        b"event: a\nid: 4\ndata: x\n\n",
        b"event: a\ndata: x\ndata: y\n\n",
        b"event: a\r\ndata: x\r\n\r\n",
        b"event: a\n\n",
        b"event: a\ndata: \xff\n\n",
        b"data: plain\n\n",
        b": comment\n\n",
        b"event: error\ndata: {}\n\n",
    ]
)


@given(st.lists(_TYPED_BLOCKS, min_size=1, max_size=4))
def test_a_whole_typed_read_decodes_as_its_bytes_one_by_one(blocks: list[bytes]) -> None:
    stream = b"".join(blocks)
    assert decode(b": start\n\n", stream) == decode(*(stream[i : i + 1] for i in range(len(stream))))
