"""--trace-dir keeps the exact bytes of each exchange, redacted and bounded."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest

from sse_adapter.ops import trace
from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import fixture
from tests.upstream_fake import fake_upstream, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "MY PROMPT"}]}


async def traced(folder: Path, bodies: bool = False, requests: int = 1) -> list[httpx.Response]:
    replies = []
    async with fake_upstream(sse([fixture("tgi-2.0.sse")])) as upstream:
        settings = Settings(upstream=upstream.url, trace_dir=str(folder), trace_bodies=bodies)
        async with run_adapter(settings) as adapter, httpx.AsyncClient() as client:
            for n in range(requests):
                headers = {"Authorization": "Bearer sk-SECRET", "X-Request-ID": f"req-{n}"}
                replies.append(await client.post(adapter + CHAT, json=BODY, headers=headers))
    return replies


async def test_the_exact_bytes_both_ways_with_keys_redacted(tmp_path: Path) -> None:
    [reply] = await traced(tmp_path)
    assert (tmp_path / "req-0.upstream").read_bytes() == fixture("tgi-2.0.sse")
    assert (tmp_path / "req-0.client").read_bytes() == reply.content
    meta = json.loads((tmp_path / "req-0.json").read_text())
    assert ["authorization", "[redacted]"] in meta["request"]["headers"]
    assert meta["request"]["body"] == "[not kept: --trace-bodies]"
    assert (meta["status"], meta["upstream_status"], meta["truncated_at"]) == (200, 200, {})
    everything = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert b"sk-SECRET" not in everything
    assert b"MY PROMPT" not in everything


async def test_prompts_are_kept_only_when_asked(tmp_path: Path) -> None:
    await traced(tmp_path, bodies=True)
    assert "MY PROMPT" in json.loads((tmp_path / "req-0.json").read_text())["request"]["body"]


async def test_files_are_bounded_in_size_and_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "MAX_BYTES", 100)
    monkeypatch.setattr(trace, "MAX_REQUESTS", 3)
    await traced(tmp_path, requests=5)
    assert sorted(path.name for path in tmp_path.glob("*.json")) == ["req-2.json", "req-3.json", "req-4.json"]
    assert len(list(tmp_path.iterdir())) == 9
    meta = json.loads((tmp_path / "req-4.json").read_text())
    assert meta["truncated_at"] == {"client": 100, "upstream": 100}
    assert len((tmp_path / "req-4.upstream").read_bytes()) == 100


async def test_a_request_id_cannot_escape_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    async with fake_upstream(sse([fixture("vllm.sse")])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, trace_dir=str(folder))) as adapter:
            async with httpx.AsyncClient() as client:
                await client.post(adapter + CHAT, json=BODY, headers={"X-Request-ID": "../../escape"})
    assert [path.name for path in tmp_path.iterdir()] == ["traces"]
    assert (folder / ".._.._escape.json").exists()  # no separators: it stays in the folder


async def test_tracing_never_fails_a_request_when_rotations_race(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "MAX_REQUESTS", 5)
    async with fake_upstream(sse([fixture("vllm.sse")])) as upstream:
        settings = Settings(upstream=upstream.url, trace_dir=str(tmp_path))
        async with run_adapter(settings) as adapter:

            async def keep_alive_client() -> list[int]:
                async with httpx.AsyncClient() as client:
                    return [(await client.post(adapter + CHAT, json=BODY)).status_code for _ in range(150)]

            statuses = await asyncio.gather(*(keep_alive_client() for _ in range(4)))
    assert [status for run in statuses for status in run] == [200] * 600
    assert len(list(tmp_path.glob("*.json"))) <= 5 + 4  # the newest few, give or take a race


async def test_a_trace_folder_that_cannot_be_written_fails_no_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder should be")
    async with fake_upstream(sse([fixture("vllm.sse")])) as upstream:
        settings = Settings(upstream=upstream.url, trace_dir=str(blocked))
        async with run_adapter(settings) as adapter, httpx.AsyncClient() as client:
            replies = [await client.post(adapter + CHAT, json=BODY) for _ in range(3)]
    assert [reply.status_code for reply in replies] == [200] * 3
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len([record for record in warnings if "could not write the trace" in record.getMessage()]) == 1


async def test_the_trace_records_the_outcome_the_upstreams_headers_and_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "MAX_BYTES", 100)
    [reply] = await traced(tmp_path)
    meta = json.loads((tmp_path / "req-0.json").read_text())
    assert meta["outcome"] == "ok"
    assert ["content-type", "text/event-stream"] in meta["upstream_headers"]
    assert meta["bytes"] == {"upstream": len(fixture("tgi-2.0.sse")), "client": len(reply.content)}
    assert meta["truncated_at"] == {"client": 100, "upstream": 100}
