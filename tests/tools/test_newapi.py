"""The new-api double and the agent client's view: what reaches Codex and Claude Code behind new-api."""

from __future__ import annotations

import httpx
import orjson
import pytest

from sse_adapter.repair.format import Format
from sse_adapter.tools.agentclient import AgentView, faults
from sse_adapter.tools.newapi import NewAPIRelay, nonstream_error
from tests.formats_fake import messages_stream, responses_delta, responses_head, responses_stream, typed

DELTA = b'{"type":"response.output_text.delta","sequence_number":4,"delta":"a"}'


def relay(data: bytes) -> list[bytes]:
    double = NewAPIRelay()
    return double.feed(data) + double.close()


def named(kind: bytes, payload: bytes) -> bytes:
    return b"event: " + kind + b"\ndata: " + payload + b"\n\n"


@pytest.mark.parametrize(
    ("upstream", "forwarded"),
    [
        pytest.param(
            b"event: response.output_text.delta\ndata: " + DELTA + b"\n\n",
            [named(b"response.output_text.delta", DELTA)],
            id="named-for-its-type",
        ),
        pytest.param(
            b"event: wrong\ndata: " + DELTA + b"\r\n\r\n",
            [named(b"response.output_text.delta", DELTA)],
            id="upstream-name-replaced-cr-dropped",
        ),
        pytest.param(
            b"data:" + DELTA + b"\n\n", [named(b"response.output_text.delta", DELTA)], id="no-space-kept"
        ),
        pytest.param(b": keep-alive\n\nid: 1\nretry: 5\n\n", [], id="comments-and-fields-dropped"),
        pytest.param(
            b'data: {"error":{"message":"boom"}}\n\n',
            [named(b"", b'{"error":{"message":"boom"}}')],
            id="no-type-no-name",
        ),
        pytest.param(b"data: {not json\n\ndata: " + DELTA + b"\n\n", [], id="undecodable-ends-the-relay"),
        pytest.param(b"data: [DONE]\n\ndata: " + DELTA + b"\n\n", [], id="done-ends-the-relay"),
        pytest.param(b"data: " + DELTA, [named(b"response.output_text.delta", DELTA)], id="last-line-at-eof"),
    ],
)
def test_new_api_rules(upstream: bytes, forwarded: list[bytes]) -> None:
    assert relay(upstream) == forwarded


def test_split_at_every_offset_gives_the_same_frames() -> None:
    body = b"".join(responses_stream(["Hel", "lo"]))
    whole = relay(body)
    for cut in range(1, len(body)):
        double = NewAPIRelay()
        assert double.feed(body[:cut]) + double.feed(body[cut:]) + double.close() == whole


@pytest.mark.parametrize(
    ("status", "body", "key", "said"),
    [
        pytest.param(200, b'{"output":[]}', "output", None, id="responses-ok"),
        pytest.param(200, b'{"content":[]}', "content", None, id="messages-ok"),
        pytest.param(500, b"{}", "output", "status 500", id="status"),
        pytest.param(200, b"nope", "output", "the body is not JSON", id="not-json"),
        pytest.param(200, b'{"error":{"type":"x","message":"m"}}', "content", "m", id="error"),
        pytest.param(200, b'{"id":"r"}', "output", "no `output` list in the answer", id="no-output"),
    ],
)
def test_nonstream_error(status: int, body: bytes, key: str, said: str | None) -> None:
    assert nonstream_error(status, body, key) == said


def view(form: Format, parts: list[bytes], times: list[float] | None = None) -> AgentView:
    frames = relay(b"".join(parts))
    seen = AgentView(form, 200, httpx.Headers())
    for number, frame in enumerate(frames):
        name, data = frame.removesuffix(b"\n\n").split(b"\n")
        at = times[number] if times else 0.01 * number
        seen.events.append((at, name.removeprefix(b"event: ").decode() or "message", data[6:].decode()))
    return seen


def test_a_clean_responses_stream_has_no_faults() -> None:
    seen = view(Format.RESPONSES, responses_stream(["Hel", "lo"]))
    assert seen.text() == "Hello"
    assert seen.terminals() == ["response.completed"]
    assert faults(seen, "Hello", None, False) == []


def test_a_clean_messages_stream_has_no_faults() -> None:
    seen = view(Format.MESSAGES, messages_stream(["Hel", "lo"]))
    assert seen.text() == "Hello"
    assert seen.terminals() == ["message_stop"]
    assert faults(seen, "Hello", None, False) == []


def failed(number: int, message: str, rid: str = "resp_up") -> bytes:
    response = {"id": rid, "status": "failed", "error": {"code": "server_error", "message": message}}
    return typed({"type": "response.failed", "sequence_number": number, "response": response})


ERROR_EVENT = typed({"type": "error", "code": "x", "message": "boom", "param": None, "sequence_number": 5})
RESPONSES_FAULTS = [
    pytest.param([*responses_head(), responses_delta("Hel", 4)], None, True, ["no terminal event"], id="cut"),
    pytest.param(
        [*responses_head(), responses_delta("Hel", 4), ERROR_EVENT],
        "boom",
        True,
        ["no terminal event", "the upstream's error was hidden"],
        id="error-event-dropped-by-codex",
    ),
    pytest.param(
        [*responses_head(), responses_delta("Hel", 4), failed(5, "boom")],
        "boom",
        True,
        [],
        id="failed-shows-it",
    ),
    pytest.param(
        [*responses_head(), responses_delta("Hel", 7), failed(8, "boom")],
        "boom",
        True,
        ["sequence numbers skip or repeat"],
        id="a-gap",
    ),
    pytest.param(
        [*responses_head(), responses_delta("Hel", 4), failed(5, "boom"), failed(6, "boom")],
        "boom",
        True,
        ["2 terminal events"],
        id="two-terminals",
    ),
    pytest.param(
        [*responses_head()[1:], responses_delta("Hel", 4), failed(5, "boom")],
        "boom",
        True,
        ["the first event is not response.created"],
        id="no-created",
    ),
    pytest.param(
        [
            *responses_head("resp_a")[:1],
            *responses_head("resp_b")[1:],
            responses_delta("Hel", 4),
            failed(5, "b", "resp_b"),
        ],
        "b",
        True,
        ["2 response ids"],
        id="two-ids",
    ),
]


@pytest.mark.parametrize(("parts", "error", "fails", "problems"), RESPONSES_FAULTS)
def test_responses_faults(parts: list[bytes], error: str | None, fails: bool, problems: list[str]) -> None:
    assert faults(view(Format.RESPONSES, parts), "Hel", error, fails) == problems


def test_a_failure_that_ends_as_completed_is_a_fault() -> None:
    seen = view(Format.RESPONSES, responses_stream(["Hel"]))
    assert faults(seen, "Hel", None, True) == ["a failure that ends in response.completed"]


ANTHROPIC_ERROR = typed({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})


@pytest.mark.parametrize(
    ("parts", "problems"),
    [
        pytest.param(
            [*messages_stream(["Hel"])[:3]],
            ["no terminal event", "the upstream's error was hidden"],
            id="cut",
        ),
        pytest.param([*messages_stream(["Hel"])[:3], ANTHROPIC_ERROR], [], id="anthropic-error"),
        pytest.param(
            [*messages_stream(["Hel"])[:3], b'event: error\ndata: {"error":{"message":"busy"}}\n\n'],
            ["no terminal event", "the upstream's error was hidden"],
            id="typeless-error-loses-its-name",
        ),
        pytest.param(
            [*messages_stream(["Hel"])[:3], ANTHROPIC_ERROR, typed({"type": "message_stop"})],
            ["2 terminal events"],
            id="error-then-stop",
        ),
        pytest.param(
            [typed({"type": "ping"}), *messages_stream(["Hel"])[1:3], ANTHROPIC_ERROR],
            ["the first event is not message_start"],
            id="no-message-start",
        ),
    ],
)
def test_messages_faults(parts: list[bytes], problems: list[str]) -> None:
    assert faults(view(Format.MESSAGES, parts), "Hel", "busy", True) == problems


def test_pings_are_heartbeats_and_silences_are_measured() -> None:
    ping = typed({"type": "ping"})
    parts = [ping, *messages_stream(["Hel"])]
    seen = view(Format.MESSAGES, parts, times=[1.0, 1.5, 1.6, 1.7, 4.0, 4.1, 4.2])
    assert seen.heartbeats() == 1
    assert seen.first_event() == "message_start"  # the SDK drops pings before its accumulator
    assert seen.longest_silence() == pytest.approx(2.3)


def test_an_error_status_shows_its_message() -> None:
    seen = AgentView(Format.MESSAGES, 529, httpx.Headers(), raw=orjson.dumps({"error": {"message": "busy"}}))
    assert seen.errors() == ["busy"]
    assert faults(seen, "", "busy", True) == []
    assert faults(seen, "", None, False) == ["HTTP 529"]
