"""--access-log-probes: health probes and metric scrapes stay out of the access log
unless asked for, and /metrics counts them either way. The real CLI, in its own process:
the access log's configuration is the server's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.adapter_server import STARTUP, free_port
from tests.ops.test_observe import samples

PROBES = ("/healthz", "/readyz", "/metrics")


def access_lines(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """The routes of the access lines the adapter wrote while each probe was hit twice and one
    /v1 request made; and the /metrics page after them."""
    port = free_port()
    log = tmp_path / "stderr.log"
    command = [sys.executable, "-m", "sse_adapter", "serve", "--upstream", "http://127.0.0.1:9"]
    command += ["--port", str(port), "--log-format", "json", *flags]
    with log.open("wb") as stderr:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP
        with httpx.Client(timeout=30) as client:
            while True:
                try:
                    client.get(base + "/healthz")
                    break
                except httpx.TransportError:
                    assert server.poll() is None, log.read_text()
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            for path in PROBES:
                client.get(base + path)
            client.get(base + "/v1/models")  # a client's request: the upstream is down, a 502
            page = client.get(base + "/metrics").text
    finally:
        server.terminate()
        server.wait(STARTUP)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["route"] for line in lines if line["logger"] == "sse_adapter.access"], page


def probe_hits(page: str) -> dict[str, float]:
    got = samples(page)
    hits = {route: 0.0 for route in ("healthz", "readyz", "metrics")}
    for (name, labels), value in got.items():
        route = dict(labels).get("route")
        if name == "sse_adapter_requests_total" and route in hits:
            hits[route] += value
    return hits


@pytest.mark.parametrize(
    ("flags", "env", "logged"),
    [
        pytest.param((), None, False, id="default-off"),
        pytest.param(("--access-log-probes", "on"), None, True, id="flag-on"),
        pytest.param((), {"SSE_ADAPTER_ACCESS_LOG_PROBES": "on"}, True, id="env-on"),
        pytest.param(
            ("--access-log-probes", "off"), {"SSE_ADAPTER_ACCESS_LOG_PROBES": "on"}, False, id="flag-wins"
        ),
    ],
)
def test_probes_are_counted_and_logged_only_when_asked(
    tmp_path: Path, flags: tuple[str, ...], env: dict[str, str] | None, logged: bool
) -> None:
    routes, page = access_lines(tmp_path, *flags, env={**os.environ, **(env or {})})
    assert "passthrough" in routes  # a client's request is always logged
    probes = [route for route in routes if route in ("healthz", "readyz", "metrics")]
    if logged:
        assert probes.count("healthz") >= 2
        assert probes.count("readyz") == 1
        assert probes.count("metrics") >= 1
    else:
        assert probes == []
    # /metrics counts every hit, logged or not (the last scrape counts once it is over)
    assert probe_hits(page)["healthz"] >= 2
    assert probe_hits(page)["readyz"] == 1
    assert probe_hits(page)["metrics"] >= 1
