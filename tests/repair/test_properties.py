"""Properties that must hold for any input (hypothesis)."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_adapter.errors import AdapterError, EventTooLarge, InternalError
from sse_adapter.repair import toolcalls
from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.completion import Assembler, normalise_completion
from sse_adapter.repair.fitting import serialised
from sse_adapter.repair.pipeline import Pipeline
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.settings import Settings
from sse_adapter.sse.decoder import Event, SSEDecoder
from sse_adapter.sse.encoder import frame

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures").glob("*.sse"))
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
    ids = (f"call_{number}" for number in itertools.count())
    with mock.patch.object(toolcalls, "new_call_id", side_effect=ids):
        return _repaired(decoder, repairer, pieces, payloads)


def _repaired(
    decoder: SSEDecoder, repairer: StreamRepairer, pieces: list[bytes], payloads: list[bytes]
) -> list[bytes] | str:
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


KEYS = (
    "content",
    "text",
    "index",
    "role",
    "reasoning",
    "reasoning_content",
    "tool_calls",
    "function",
    "arguments",
    "name",
    "id",
    "type",
    "finish_reason",
    "delta",
    "message",
    "usage",
    "choices",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "logprobs",
    "error",
    "timings",
)

# Arbitrary JSON where the repairs look: every value the repairer or the
# assembler touches may be of any type.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(
        ['<tool_call>{"name": "f", "arguments": {}}</tool_call>', "<tool_call>", "</tool_call>"]
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(KEYS),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
FIELD = st.one_of(JSON_VALUES, st.text(max_size=30))
CHOICE = st.fixed_dictionaries(
    {},
    optional={key: FIELD for key in ("index", "delta", "message", "text", "finish_reason", "logprobs")},
)
CHUNK = st.fixed_dictionaries(
    {},
    optional={
        "id": FIELD,
        "object": FIELD,
        "created": FIELD,
        "model": FIELD,
        "choices": st.one_of(JSON_VALUES, st.lists(CHOICE, max_size=3)),
        "usage": FIELD,
        "error": FIELD,
        "error_code": FIELD,
        "prompt_eval_count": FIELD,
        "eval_count": FIELD,
    },
)
KINDS = st.sampled_from([Kind.CHAT, Kind.COMPLETION])
SETTINGS = st.builds(
    Settings,
    upstream=st.just("http://x"),
    think_tags=st.sampled_from(["keep", "split"]),
    tool_calls=st.sampled_from(["normalise", "keep"]),
    tool_call_tags=st.sampled_from(["keep", "split"]),
    reasoning_field=st.sampled_from(["reasoning_content", "reasoning", "both", "keep", "think-tags"]),
    map_finish_reason=st.booleans(),
    fill_fields=st.booleans(),
    max_line_bytes=st.integers(min_value=1024, max_value=4096),
)


@settings(deadline=None, max_examples=500)
@given(st.lists(CHUNK, min_size=1, max_size=4), KINDS, SETTINGS)
def test_any_json_in_a_stream_is_repaired_passed_on_or_an_upstream_error(
    chunks: list[dict[str, object]], kind: Kind, options: Settings
) -> None:
    repairer = StreamRepairer(StreamIdentity(kind, "m", 1), options)
    payloads = []
    with contextlib.suppress(AdapterError):  # the only failure allowed: a clear error of ours
        for chunk in chunks:
            payloads += repairer.repair(Event(orjson.dumps(chunk).decode()))
        payloads += repairer.finish()
    for payload in payloads:
        assert isinstance(orjson.loads(payload), dict)
        line = frame(payload).split(b"\n", 1)[0]  # the data line, without its line end
        assert len(line) <= options.max_line_bytes


@settings(deadline=None, max_examples=500)
@given(CHUNK, st.lists(CHUNK, max_size=4), KINDS, SETTINGS)
def test_any_json_in_a_body_is_normalised_or_an_upstream_error(
    body: dict[str, object], chunks: list[dict[str, object]], kind: Kind, options: Settings
) -> None:
    with contextlib.suppress(AdapterError):
        assert isinstance(orjson.loads(serialised(normalise_completion(body, kind, options, 1))), dict)
    assembler = Assembler(kind)
    for chunk in chunks:
        assembler.add(chunk)
    with contextlib.suppress(AdapterError):
        assert isinstance(orjson.loads(serialised(assembler.result())), dict)


def test_text_before_a_failure_in_the_same_read_goes_out_first() -> None:
    """Even a fault of the adapter's own: the read's earlier payloads come before the error."""

    class FailsOnBoom(StreamRepairer):  # the repairer keeps its state in slots: a subclass, not a patch
        def repair(self, event: Event) -> list[bytes]:
            if "boom" in event.data:
                raise TypeError("a bug")
            return super().repair(event)

    repairer = FailsOnBoom(StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://x"))
    pipeline = Pipeline(repairer, 1 << 20)
    good = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"choices":[]}\n\n'
    good = good.replace(b"[]", b'[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]')
    payloads, _, failure = pipeline.feed(good + b'data: {"boom":1}\n\n' + good)
    assert [orjson.loads(p)["choices"][0]["delta"]["content"] for p in payloads] == ["hi"]
    assert isinstance(failure, InternalError)
