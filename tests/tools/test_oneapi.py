"""The One-API double follows shared/oneapi-relay.md rule by rule."""

from __future__ import annotations

import pytest

from sse_adapter.tools.oneapi import LINE_LIMIT, OneAPIRelay, accepts_stream

CHUNK = b'{"choices":[{"index":0,"delta":{"content":"a"}}]}'


def relay(data: bytes, chat: bool = True) -> list[bytes]:
    double = OneAPIRelay(chat=chat)
    return double.feed(data) + double.close()


@pytest.mark.parametrize(
    ("upstream", "forwarded"),
    [
        (b"data: " + CHUNK + b"\n\n", [b"data: " + CHUNK + b"\n\n", b"data: [DONE]\n\n"]),
        (b"data: " + CHUNK + b"\r\n\r\n", [b"data: " + CHUNK + b"\n\n", b"data: [DONE]\n\n"]),
        (b"data:" + CHUNK + b"\n\n", [b"data: [DONE]\n\n"]),
        (b": ping\n\nevent: x\nid: 1\nretry: 5\n\n", [b"data: [DONE]\n\n"]),
        (
            b"data: " + CHUNK + b"\rdata: " + CHUNK + b"\r",
            [b"data: " + CHUNK + b"\rdata: " + CHUNK + b"\n\n", b"data: [DONE]\n\n"],
        ),
        (b'data: {"choices":[]}\n\n', [b"data: [DONE]\n\n"]),
        (b'data: {"error":{"message":"boom"}}\n\n', [b"data: [DONE]\n\n"]),
        (
            b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n',
            [b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n', b"data: [DONE]\n\n"],
        ),
        (b"data: not json\n\n", [b"data: not json\n\n", b"data: [DONE]\n\n"]),
        (b"data: [DONE]\n\n", [b"data: [DONE]\n\n"]),
        (b"data: " + CHUNK, [b"data: " + CHUNK + b"\n\n", b"data: [DONE]\n\n"]),
    ],
    ids=[
        "lf",
        "crlf-trailing-cr-dropped",
        "no-space-dropped",
        "non-data-lines-dropped",
        "lone-cr-is-no-line-end",
        "empty-choices-dropped",
        "error-chunk-dropped",
        "usage-only-kept",
        "unparsable-passed-raw",
        "done-not-doubled",
        "last-line-at-eof",
    ],
)
def test_chat_rules(upstream: bytes, forwarded: list[bytes]) -> None:
    assert relay(upstream) == forwarded


def test_completions_forward_every_data_line() -> None:
    assert relay(b'data: {"choices":[]}\n\n', chat=False) == [
        b'data: {"choices":[]}\n\n',
        b"data: [DONE]\n\n",
    ]


def test_a_line_over_64_kib_stops_the_scan_and_done_is_still_appended() -> None:
    long = b'data: {"choices":[{"delta":{"content":"' + b"x" * LINE_LIMIT + b'"}}]}\n\n'
    after = b"data: " + CHUNK + b"\n\n"
    double = OneAPIRelay()
    assert double.feed(long + after) == []
    assert double.overflowed
    assert double.close() == [b"data: [DONE]\n\n"]


def test_the_longest_line_that_fits() -> None:
    fits = b"data: " + b"y" * (LINE_LIMIT - 6)
    assert relay(fits + b"\n", chat=False)[0] == fits + b"\n\n"
    assert relay(fits + b"y\n", chat=False) == [b"data: [DONE]\n\n"]


@pytest.mark.parametrize(
    ("status", "content_type", "accepted"),
    [
        (200, "text/event-stream", True),
        (201, "text/event-stream", True),
        (200, "application/json", False),
        (500, "text/event-stream", False),
        (202, "text/event-stream", False),
    ],
)
def test_which_responses_count_as_streams(status: int, content_type: str, accepted: bool) -> None:
    assert accepts_stream(status, content_type) is accepted
