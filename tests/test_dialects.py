"""The repairs of upstream payloads, and our own chunks (pure)."""

from __future__ import annotations

import orjson
import pytest

from sse_adapter.chunks import Kind, StreamIdentity, error_chunk, heartbeat_chunk
from sse_adapter.decoder import Event
from sse_adapter.dialects import RequestFields, StreamRepairer, error_message
from sse_adapter.errors import UpstreamDisconnected, UpstreamError


def repairer(kind: Kind = Kind.CHAT) -> StreamRepairer:
    return StreamRepairer(StreamIdentity(kind, "req-model", 1700000000))


def test_payloads_needing_no_repair_go_out_byte_for_byte() -> None:
    data = '{"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "a"}}]}'
    assert repairer().repair(Event(data)) == [data.encode()]


def test_an_empty_id_becomes_one_generated_id_for_the_whole_stream() -> None:
    fix = repairer()
    first, second = (orjson.loads(fix.repair(Event('{"id":"","choices":[]}'))[0]) for _ in range(2))
    assert first["id"] == second["id"]
    assert first["id"].startswith("chatcmpl-")
    assert fix.repairs["id_unified"] == 2


def test_ids_that_change_mid_stream_are_unified_to_the_first() -> None:
    fix = repairer()
    fix.repair(Event('{"id":"a","choices":[]}'))
    assert orjson.loads(fix.repair(Event('{"id":"b","choices":[]}'))[0])["id"] == "a"


def test_a_heartbeat_before_the_first_chunk_fixes_the_id() -> None:
    fix = repairer(Kind.COMPLETION)
    beat = orjson.loads(heartbeat_chunk(fix.identity))
    assert beat["id"].startswith("cmpl-")
    assert beat["object"] == "text_completion"
    assert beat["model"] == "req-model"
    chunk = orjson.loads(fix.repair(Event('{"id":"cmpl-up","choices":[]}'))[0])
    assert chunk["id"] == beat["id"]


def test_a_multi_line_payload_is_put_on_one_line() -> None:
    fix = repairer()
    [out] = fix.repair(Event('{"id": "x",\n "choices": []}'))
    assert out == b'{"id":"x","choices":[]}'
    assert fix.repairs["multi_line_payload"] == 1


@pytest.mark.parametrize("done", ["[DONE]", " [DONE] "])
def test_done_finishes_the_stream(done: str) -> None:
    fix = repairer()
    assert fix.repair(Event(done)) == []
    assert fix.finished


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '"text"', '{"id": "x",'])
def test_a_payload_that_is_no_json_object_is_an_error(data: str) -> None:
    with pytest.raises(UpstreamError, match="not a JSON object"):
        repairer().repair(Event(data))


def test_the_error_chunk_is_forwarded_by_one_api_and_raised_by_the_sdk() -> None:
    identity = StreamIdentity(Kind.CHAT, "m", 1)
    chunk = orjson.loads(error_chunk(identity, UpstreamDisconnected("cut")))
    assert chunk["error"] == {"message": "cut", "type": "upstream_error", "code": "upstream_disconnected"}
    assert chunk["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error":"Input validation error","error_type":"validation"}', "Input validation error"),
        (b'{"error":{"message":"bad request","type":"BadRequestError","code":400}}', "bad request"),
        (b'{"object":"error","message":"model not found"}', "model not found"),
        (b'{"text":"NETWORK ERROR","error_code":50001}', "NETWORK ERROR"),
        (b'{"detail":"Not Found"}', "Not Found"),
        (
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        ),
        (b"", "(empty body)"),
    ],
    ids=["tgi", "vllm", "sglang", "fastchat", "fastapi", "html", "empty"],
)
def test_error_message_finds_the_upstreams_words(body: bytes, message: str) -> None:
    assert error_message(body) == message


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b'{"model":"m","stream":true}', RequestFields(True, "m")),
        (b'{"model":"m","stream":"yes"}', RequestFields(False, "m")),
        (b'{"stream":true}', RequestFields(True, "")),
        (b"not json", RequestFields(False, "")),
        (b"[]", RequestFields(False, "")),
    ],
)
def test_request_fields(body: bytes, fields: RequestFields) -> None:
    assert RequestFields.parse(body) == fields
