"""What a request body costs in memory, and the top-level splitter it rests on (pure)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import orjson
import pytest

from sse_adapter.errors import InvalidJSON
from sse_adapter.repair.body import Members
from sse_adapter.repair.request import Rejection, prepare, rejected_fields
from sse_adapter.repair.toolcalls import offers_tools

MiB = 1 << 20
SIZE = 20 * MiB
HEAD = b'{"model":"m","stream":true,"messages":'


def _huge_string() -> bytes:
    return HEAD + b'[{"role":"user","content":"' + b"x" * SIZE + b'"}]}'


def _small_messages() -> bytes:
    one = b'{"role":"user","content":"hello there, how are you today?"},'
    return HEAD + b"[" + one * (SIZE // len(one)) + b'{"role":"user","content":"x"}]}'


def _nested() -> bytes:
    one = b'{"role":"user","content":' + b"[" * 500 + b"1" + b"]" * 500 + b"},"
    return HEAD + b"[" + one * (SIZE // len(one)) + b'{"role":"user","content":"x"}]}'


def _small_numbers() -> bytes:
    # Parsed whole this was the worst: a pointer per two bytes (5x), and
    # orjson.dumps of it asked for 100x.
    return HEAD + b'[{"role":"user","content":"x","n":[' + b"1," * (SIZE // 2) + b"1]}]}"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_huge_string, id="one-huge-string"),
        pytest.param(_small_messages, id="small-messages"),
        pytest.param(_nested, id="nested-500-deep"),
        pytest.param(_small_numbers, id="small-numbers"),
    ],
)
def test_preparing_a_20_mib_request_takes_a_small_multiple_of_its_size(make: Callable[[], bytes]) -> None:
    body = make()
    tracemalloc.start()
    try:
        outgoing = prepare(body, ask_usage=True, drop=("logit_bias",))  # the body is rewritten
        _, peak = tracemalloc.get_traced_memory()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outgoing.repairs["stream_usage_asked"] == 1
    assert peak <= 2 * len(body)  # the body written anew, and no tree
    assert held <= 1.1 * len(body)  # the new body alone
    assert outgoing.body.startswith(b'{"model":"m","stream":true,"messages":[{"role":"user"')
    assert outgoing.body.endswith(b',"stream_options":{"include_usage":true}}')


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"a":[1,2,}', id="bad-syntax-inside"),
        pytest.param(b'{"a":{"b":"\xff"}}', id="bad-utf8-inside"),
        pytest.param(b'{"a":"\\ud800"}', id="lone-surrogate"),
        pytest.param(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", id="deeper-than-the-parser-goes"),
        pytest.param(b'{"a":1} x', id="trailing"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', id="bom"),
        pytest.param(b'{"a":NaN}', id="nan"),
        pytest.param(b'"{}"', id="a-string"),
    ],
)
def test_what_is_no_json_object_is_refused_as_before(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError if body != b'"{}"' else AssertionError):
        assert isinstance(orjson.loads(body), dict)
    with pytest.raises(InvalidJSON, match="not a JSON object"):
        Members(body)


def test_the_error_quotes_only_the_start_of_a_huge_body() -> None:
    body = b"x" + b" " * SIZE
    tracemalloc.start()
    try:
        with pytest.raises(InvalidJSON) as raised:
            prepare(body, ask_usage=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "'x...'" in raised.value.message
    assert peak < MiB


def test_an_edited_body_keeps_each_value_byte_for_byte() -> None:
    members = Members(b' { "a" : [1, 2.50, "\\u0073"] , "b":{"c" :1}, "a": {"x": 1e2} } ')
    assert members.pop("b")
    members.set("d", {"e": True})
    assert members.encoded() == b'{"a":{"x": 1e2},"d":{"e":true}}'
    assert not members.pop("b")
    members.pop("a")
    members.pop("d")
    assert members.encoded() == b"{}"


@pytest.mark.parametrize(
    "request_",
    [
        {"tools": [{"type": "function"}]},
        {"tools": [{"type": "function"}], "tool_choice": "none"},
        {"tools": [{"type": "function"}], "tool_choice": "auto"},
        {"tools": []},
        {"tools": {}},
        {"tools": None},
        {"tools": "x"},
        {},
    ],
)
def test_tools_offered_are_read_as_toolcalls_reads_them(request_: dict[str, object]) -> None:
    outgoing = prepare(orjson.dumps(request_), ask_usage=False)
    assert outgoing.offers_tools == offers_tools(request_)
    spaced = prepare(orjson.dumps(request_).replace(b"[]", b"[ \n ]"), ask_usage=False)
    assert spaced.offers_tools == offers_tools(request_)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_huge_string, id="one-huge-string"),
        pytest.param(_small_messages, id="small-messages"),
        pytest.param(_small_numbers, id="small-numbers"),
    ],
)
def test_a_refusal_of_a_20_mib_request_is_read_without_parsing_it(make: Callable[[], bytes]) -> None:
    # Each message's text with an escape in it: every string is decoded to be searched.
    body = make().replace(b'"content":"', b'"content":"\\n', 1_000_000)
    body = body[:-1] + b',"logit_bias":{"1":2}}'
    refusal = b'{"error": {"message": "Unsupported param: logit_bias"}}'
    tracemalloc.start()
    try:
        rejection = rejected_fields(400, refusal, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rejection == Rejection(frozenset({"logit_bias"}), frozenset({"logit_bias"}))
    assert peak <= 4 * len(body)  # no tree (parsed whole: 5 to 40 times)
