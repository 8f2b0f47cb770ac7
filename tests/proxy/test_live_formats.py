"""Responses and Messages transcripts recorded from live servers (tests/fixtures/live/), replayed
through the adapter byte for byte: what the server said is what the client gets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.upstream_fake import Received, Writer, fake_upstream, json_answer

pytestmark = pytest.mark.anyio

LIVE = Path(__file__).parent.parent / "fixtures" / "live"
_EVENT_END = re.compile(rb"(?<=\n\n)")


def recorded(kind: str) -> list[str]:
    """The stems of recorded answers of one kind: ``sse`` streams or ``json`` bodies."""
    return sorted(
        meta.name.removesuffix(".meta.json")
        for meta in LIVE.glob("*.meta.json")
        if orjson.loads(meta.read_bytes())["body_file"].endswith("." + kind)
        and "/count_tokens" not in orjson.loads(meta.read_bytes())["request"]["path"]
    )


def meta(stem: str) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads((LIVE / f"{stem}.meta.json").read_bytes())
    return found


def request_of(stem: str) -> tuple[str, dict[str, Any]]:
    sent = orjson.loads((LIVE / f"{stem}.request.json").read_bytes())
    return meta(stem)["request"]["path"], sent.get("body", sent)


def replay(stem: str) -> Any:
    """The recording, event by event, with its status and content type."""
    body = (LIVE / meta(stem)["body_file"]).read_bytes()
    status = meta(stem)["status"]

    async def handler(request: Received, out: Writer) -> None:
        if body.startswith(b"{"):
            await json_answer(status, body)(request, out)
            return
        await out.start(status, [("Content-Type", "text/event-stream")])
        for piece in _EVENT_END.split(body):
            await out.chunk(piece)
        await out.end()

    return handler


def deltas_text(raw: bytes) -> str:
    """The answer's visible text: output_text deltas, or Messages' text deltas."""
    text = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            body = orjson.loads(line[6:])
            if body.get("type") == "response.output_text.delta":
                text.append(body["delta"])
            elif body.get("type") == "content_block_delta" and body["delta"].get("type") == "text_delta":
                text.append(body["delta"]["text"])
    return "".join(text)


def events_in(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def failed(stem: str) -> bool:
    """A recording in which the server reported an error mid-stream."""
    recording = (LIVE / meta(stem)["body_file"]).read_bytes()
    said = [body.get("type") for body in events_in(recording)]
    return b"\nevent: error\n" in b"\n" + recording or "error" in said


def numbered(events: list[dict[str, Any]]) -> bool:
    """Every event carries the sequence number one above the one before (vLLM's, OpenAI's)."""
    numbers = [body.get("sequence_number") for body in events]
    return numbers == list(range(len(numbers))) if "sequence_number" in events[0] else not any(numbers)


@pytest.mark.parametrize("stem", recorded("sse"))
async def test_a_recorded_stream_reaches_the_client_whole(stem: str) -> None:
    path, body = request_of(stem)
    recording = (LIVE / meta(stem)["body_file"]).read_bytes()
    async with fake_upstream(replay(stem)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.post(adapter + path, json={**body, "stream": True})
    assert answer.status_code == 200
    sent, got = events_in(recording), events_in(answer.content)
    assert deltas_text(answer.content) == deltas_text(recording)
    if failed(stem):  # what came before the error, then the error once, in the route's own shape
        assert got[:-1] == sent[:-1]
        assert got[-1]["type"] in ("error", "response.failed")
        assert sent[-1]["message"] in orjson.dumps(got[-1]).decode()
        return
    if (numbered(sent) and sent[0].get("sequence_number") == 0) or "/v1/messages" in path:
        assert answer.content == recording  # nothing to repair: byte for byte
        return
    # llama-server numbers nothing: the adapter numbers every event and fills the indexes the SDK reads
    assert [event["sequence_number"] for event in got] == list(range(len(got)))
    owned = ("sequence_number", "output_index", "content_index")
    assert [{k: v for k, v in event.items() if k not in owned} for event in got] == sent


@pytest.mark.parametrize(
    "stem", [stem for stem in recorded("sse") if "responses" in stem and not failed(stem)]
)
async def test_the_openai_sdk_reads_a_recorded_responses_stream_whole(stem: str) -> None:
    _, body = request_of(stem)
    async with fake_upstream(replay(stem)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            sdk = openai.AsyncOpenAI(base_url=adapter + "/v1", api_key="k", max_retries=0)
            async with sdk.responses.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
                final = await stream.get_final_response()
            await sdk.close()
    recording = (LIVE / meta(stem)["body_file"]).read_bytes()
    assert final.output_text == deltas_text(recording)
    assert final.usage is not None
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize(
    "stem", [stem for stem in recorded("sse") if "messages" in stem and not failed(stem)]
)
async def test_the_anthropic_sdk_reads_a_recorded_messages_stream_whole(stem: str) -> None:
    _, body = request_of(stem)
    async with fake_upstream(replay(stem)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            sdk = anthropic.AsyncAnthropic(base_url=adapter, api_key="k", max_retries=0)
            async with sdk.messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
                final = await stream.get_final_message()
            await sdk.close()
    recording = (LIVE / meta(stem)["body_file"]).read_bytes()
    text = "".join(block.text for block in final.content if block.type == "text")
    assert text == deltas_text(recording)
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("stem", [stem for stem in recorded("json") if meta(stem)["status"] >= 400])
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "non-stream"])
async def test_a_recorded_refusal_keeps_its_status_and_message_in_the_routes_shape(
    stem: str, streaming: bool
) -> None:
    path, body = request_of(stem)
    recording = orjson.loads((LIVE / meta(stem)["body_file"]).read_bytes())
    said = (recording.get("error") or {}).get("message") or recording.get("message")
    async with fake_upstream(replay(stem)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.post(adapter + path, json={**body, "stream": streaming})
    assert answer.status_code == meta(stem)["status"]
    got = answer.json()
    if path == "/v1/messages":
        assert got["type"] == "error"
        assert got["error"]["type"] in ("invalid_request_error", "not_found_error")
    assert said in got["error"]["message"]


@pytest.mark.parametrize("stem", [stem for stem in recorded("sse") if "messages" in stem and failed(stem)])
async def test_the_anthropic_sdk_raises_on_a_recorded_failure(stem: str) -> None:
    _, body = request_of(stem)
    async with fake_upstream(replay(stem)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            sdk = anthropic.AsyncAnthropic(base_url=adapter, api_key="k", max_retries=0)
            with pytest.raises(anthropic.APIStatusError) as raised:
                async with sdk.messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
                    await stream.get_final_message()
            await sdk.close()
    assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index,call-overload]
