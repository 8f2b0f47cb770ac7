"""Metrics, readiness and the access log, after requests whose effects are known."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sse_adapter.ops.logs import TextFormatter
from sse_adapter.proxy import health
from sse_adapter.settings import Settings
from tests.adapter_server import STARTUP, free_port, run_adapter
from tests.end_client import fixture, stream
from tests.upstream_fake import Received, Writer, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(adapter: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        reply = await client.get(adapter + "/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    return samples(reply.text)


async def test_metrics_count_known_streams() -> None:
    async with fake_upstream(sse([fixture("tgi-2.0.sse")])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            for _ in range(2):
                await stream(adapter, CHAT, {"model": "m", "stream": True})
            got = await scrape(adapter)
    assert (
        got[
            (
                "sse_adapter_requests_total",
                (("mode", "stream"), ("route", "chat_completions"), ("status", "200")),
            )
        ]
        == 2
    )
    repairs = {
        dict(labels)["kind"]: value
        for (name, labels), value in got.items()
        if name == "sse_adapter_repairs_total"
    }
    assert repairs["no_space_after_data"] == 2 * 5
    assert repairs["missing_done"] == 2
    assert repairs["finish_reason_mapped"] == 2
    assert repairs["id_unified"] == 2 * 5
    assert got[("sse_adapter_events_relayed_total", ())] == 2 * 5
    assert got[("sse_adapter_active_streams", ())] == 0
    assert got[("sse_adapter_time_to_first_event_seconds_count", ())] == 2
    assert got[("sse_adapter_stream_duration_seconds_count", ())] == 2


async def test_metrics_count_heartbeats_and_errors() -> None:
    async def slow_then_error(request: Received, out: Writer) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")])
        await asyncio.sleep(0.5)
        await out.chunk(b'data: {"error":{"message":"boom","type":"x","code":500}}\n\n')
        await out.end()

    async with fake_upstream(slow_then_error) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, heartbeat_interval=0.1)) as adapter:
            seen = await stream(adapter, CHAT, {"model": "m", "stream": True})
            got = await scrape(adapter)
    beats = got[("sse_adapter_heartbeats_total", (("mode", "chunk"), ("route", "chat_completions")))]
    assert beats == seen.heartbeats() >= 2  # 0.5 s of silence: 4 or 5 at 0.1 s on an idle machine
    assert got[("sse_adapter_upstream_errors_total", (("kind", "upstream_error"),))] == 1
    assert got[("sse_adapter_repairs_total", (("kind", "error_shape"), ("route", "chat_completions")))] == 1


async def test_readyz_flips_when_the_upstream_goes_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "_TTL", 0.0)  # no cache: every probe asks the upstream

    async def healthy(request: Received, out: Writer) -> None:
        await out.start(200 if request.target == "/health" else 404, [("Content-Length", "0")], chunked=False)

    serving_upstream = fake_upstream(healthy, handles_probes=True)
    upstream = await serving_upstream.__aenter__()
    async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
        ready = await client.get(adapter + "/readyz")
        await serving_upstream.__aexit__(None, None, None)  # the model server goes away
        gone = await client.get(adapter + "/readyz")
        alive = await client.get(adapter + "/healthz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert gone.status_code == 503
    assert "/health and /v1/models: cannot connect to the model server" in gone.json()["reason"]
    assert upstream.url not in gone.json()["reason"]  # the address is for the log, not for whoever asks
    assert alive.status_code == 200


async def test_one_access_line_per_request_without_prompts_or_keys(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sse_adapter.access")
    async with fake_upstream(sse([fixture("vllm.sse")])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            body = {
                "model": "qwen",
                "stream": True,
                "messages": [{"role": "user", "content": "MY SECRET PROMPT"}],
            }
            await client.post(adapter + CHAT, json=body, headers={"Authorization": "Bearer sk-SECRET-KEY"})
    [line] = [record for record in caplog.records if record.name == "sse_adapter.access"]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["route"] == "chat_completions"
    assert fields["stream"] is True
    assert (fields["model"], fields["status"], fields["upstream_status"], fields["outcome"]) == (
        "qwen",
        200,
        200,
        "ok",
    )
    assert fields["events"] == 6  # role, four tokens, finish carrying the usage
    assert fields["repairs"] == {"usage_moved_last": 1, "usage_on_last_chunk": 1, "stream_usage_asked": 1}
    assert fields["ttft_ms"] is not None
    assert len(fields["request_id"]) == 32
    text = line.getMessage() + repr(fields)
    assert "SECRET" not in text


def test_two_workers_report_the_sum_of_both(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(tmp_path)  # where the workers' metrics folder goes, and must be gone from after
    command = [
        sys.executable,
        "-m",
        "sse_adapter",
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        "--port",
        str(port),
        "--workers",
        "2",
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP
        with httpx.Client() as client:
            while True:
                try:
                    client.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        for _ in range(20):  # spread over both workers by the kernel
            with httpx.Client() as client:
                client.get(f"http://127.0.0.1:{port}/healthz")
        totals = []
        for _ in range(4):  # whichever worker answers the scrape, it reports both
            got = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
            totals.append(
                got[("sse_adapter_requests_total", (("mode", "-"), ("route", "healthz"), ("status", "200")))]
            )
        assert set(totals) == {21.0}
        assert [path.name.startswith("sse-adapter-metrics-") for path in tmp_path.iterdir()] == [True]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    assert list(tmp_path.iterdir()) == []  # the metrics folder it made went with it


async def test_no_client_value_can_forge_a_log_line() -> None:
    """The text format, as operators read it: a model name with a line break stays on its line."""
    stream_out = io.StringIO()
    handler = logging.StreamHandler(stream_out)
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    access = logging.getLogger("sse_adapter.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        async with fake_upstream(sse([fixture("vllm.sse")])) as upstream:
            async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
                forged = 'qwen\nINFO sse_adapter.access: request_id=forged status=200 model="x y"'
                await client.post(adapter + CHAT, json={"model": forged, "stream": True})
    finally:
        access.removeHandler(handler)
    lines = stream_out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "request_id=forged" not in lines[0].split("model=")[0]
    assert 'model="qwen\\nINFO sse_adapter.access: request_id=forged' in lines[0]


async def test_metrics_labels_are_a_fixed_set_whatever_paths_clients_ask_for() -> None:
    async with fake_upstream(sse([fixture("vllm.sse")])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, api_keys=("sk",))) as adapter:
            async with httpx.AsyncClient() as client:
                for n in range(50):
                    await client.get(f"{adapter}/scan-{n}")
                    await client.get(f"{adapter}/v1/scan-{n}")  # 401: no key
            got = await scrape(adapter)
    routes = {dict(labels).get("route") for name, labels in got if name == "sse_adapter_requests_total"}
    assert routes == {"other", "passthrough"}


async def test_no_line_per_upstream_request_and_a_warning_when_the_upstream_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    broken = json_answer(500, b'{"error":{"message":"CUDA out of memory","type":"server_error","code":500}}')
    async with fake_upstream(broken) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter, httpx.AsyncClient() as client:
            await client.post(adapter + CHAT, json={"model": "m", "stream": True})
            await client.get(adapter + "/v1/models")
    lines = [
        record.getMessage() for record in caplog.records if record.name.startswith(("httpx", "httpcore"))
    ]
    assert not [line for line in lines if upstream.url in line]  # the test's own client may log
    access = [record for record in caplog.records if record.name == "sse_adapter.access"]
    assert [record.levelname for record in access] == ["WARNING", "WARNING"]  # both answered 500 upstream


async def test_a_503_from_readyz_is_no_ok_outcome(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sse_adapter.access")
    async with fake_upstream(sse([])) as upstream:
        dead = upstream.url
    async with run_adapter(Settings(upstream=dead)) as adapter, httpx.AsyncClient() as client:
        reply = await client.get(adapter + "/readyz")
    assert reply.status_code == 503
    [line] = [record for record in caplog.records if record.name == "sse_adapter.access"]
    assert line.fields["outcome"] == "not_ready"  # type: ignore[attr-defined]


async def test_metrics_have_no_created_series() -> None:
    async with fake_upstream(sse([fixture("vllm.sse")])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            await stream(adapter, CHAT, {"model": "m", "stream": True})
            got = await scrape(adapter)
    assert got  # something was counted
    assert not [name for name, _ in got if name.endswith("_created")]
