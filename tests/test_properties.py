"""Properties that must hold for any input (hypothesis)."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_adapter.chunks import Kind, StreamIdentity
from sse_adapter.decoder import Event, SSEDecoder
from sse_adapter.encoder import frame
from sse_adapter.errors import AdapterError, EventTooLarge
from sse_adapter.repair import StreamRepairer
from sse_adapter.settings import Settings

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.sse"))
SSE_BYTES = st.lists(
    st.sampled_from(
        [
            b"data:",
            b"data: ",
            b"event: x",
            b"id: 1",
            b"retry: 5",
            b": ping",
            b"{",
            b"}",
            b"a",
            b"\xe4\xbd\xa0",
            b"\xff",
            b"\r",
            b"\n",
            b"\r\n",
            b"\xef\xbb\xbf",
            b"error: ",
        ]
    ),
    max_size=60,
).map(b"".join)


LINE = st.sampled_from(
    [b"data: a", b"data:b", b"data", b"data: \xe4\xbd\xa0", b"event: e", b"id: 7", b": c", b"x: y"]
)
END = st.sampled_from([b"\n", b"\r", b"\r\n"])
STREAMS = st.lists(st.tuples(st.lists(st.tuples(LINE, END), min_size=1, max_size=4), END), max_size=6).map(
    lambda events: b"".join(b"".join(line + end for line, end in lines) + blank for lines, blank in events)
)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(point % (len(data) + 1) for point in points)})
    return [data[start:end] for start, end in itertools.pairwise(edges)]


def decoded(pieces: list[bytes], bound: int = 1 << 20) -> list[Event] | str:
    decoder = SSEDecoder(bound, field_events=frozenset({"error"}))
    try:
        return [event for piece in pieces for event in decoder.feed(piece)] + decoder.flush()
    except EventTooLarge:
        return "too large"


@settings(deadline=None, max_examples=300)
@given(
    st.one_of(STREAMS, SSE_BYTES, st.binary(max_size=300)), st.lists(st.integers(min_value=0), max_size=12)
)
def test_any_chunking_gives_the_same_events(data: bytes, points: list[int]) -> None:
    assert decoded(cut(data, points)) == decoded([data])


def repaired(pieces: list[bytes]) -> list[bytes] | str:
    decoder = SSEDecoder(1 << 20, field_events=frozenset({"error"}))
    repairer = StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://x"))
    repairer.identity.id = "chatcmpl-fixed"  # ids are random otherwise
    payloads: list[bytes] = []
    try:
        for piece in [*pieces, None]:
            events = decoder.feed(piece) if piece is not None else decoder.flush()
            for event in events:
                if not repairer.finished:
                    payloads += repairer.repair(event)
        return payloads + repairer.finish()
    except AdapterError as error:
        return f"{type(error).__name__}: {error.message} after {payloads}"


@settings(deadline=None, max_examples=60)
@given(st.sampled_from(FIXTURES), st.lists(st.integers(min_value=0), max_size=20))
def test_any_chunking_of_a_transcript_gives_the_same_output(path: Path, points: list[int]) -> None:
    data = path.read_bytes()
    assert repaired(cut(data, points)) == repaired([data])


@settings(deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=40), st.integers(min_value=16, max_value=512))
def test_arbitrary_bytes_never_crash_the_decoder_or_outgrow_its_bound(
    pieces: list[bytes], bound: int
) -> None:
    decoder = SSEDecoder(bound)
    for piece in pieces:
        with contextlib.suppress(EventTooLarge):  # the one error it may raise; it drops what it held
            decoder.feed(piece)
        assert decoder.buffered <= bound


@given(st.text().filter(lambda text: "\r" not in text and "\n" not in text))
def test_encode_then_decode_is_the_identity(payload: str) -> None:
    assert decoded([frame(payload.encode())]) == [Event(payload)]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda path: path.name)
def test_byte_by_byte_equals_whole_for_every_transcript(path: Path) -> None:
    data = path.read_bytes()
    assert repaired([data[i : i + 1] for i in range(len(data))]) == repaired([data])
