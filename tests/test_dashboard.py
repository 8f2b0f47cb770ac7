"""The Grafana dashboard asks only for series a running adapter exports: no panel stays empty.

The adapter runs on a real socket in front of a fake model server; a few requests make
every kind of series exist (a repaired stream, heartbeats and an in-band error, a refused
request, a stream the server's tokenizer cannot count); then every panel's PromQL is checked
against the scrape: each metric has samples, each label it groups by or matches on is one
those samples carry, and each label matcher selects at least one of them.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import fixture, stream
from tests.upstream_fake import SSE_HEADERS, Received, Writer, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

DEPLOY = Path(__file__).parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sse-adapter.json"
CHAT = "/v1/chat/completions"

Sample = tuple[str, dict[str, str]]

METRIC = re.compile(r"\b(sse_adapter_[a-z_]+)(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


async def model_server(request: Received, out: Writer) -> None:
    """Streams for chat; nothing else, so the tokenizer search finds no endpoint."""
    if not request.target.endswith(CHAT):
        await json_answer(404, b'{"error":"not found"}')(request, out)
    elif request.json()["model"] == "slow":  # type: ignore[index]
        await out.start(200, SSE_HEADERS)
        await asyncio.sleep(0.35)  # heartbeats go out meanwhile
        await out.chunk(b'data: {"error":{"message":"boom","type":"x","code":500}}\n\n')
        await out.end()
    else:
        await sse([fixture("tgi-2.0.sse")])(request, out)  # no usage, `data:` without the space


async def scrape_after_traffic() -> list[Sample]:
    async with fake_upstream(model_server, handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url, heartbeat_interval=0.1)) as adapter:
            await stream(adapter, CHAT, {"model": "tgi", "stream": True})
            await stream(adapter, CHAT, {"model": "slow", "stream": True})
            async with httpx.AsyncClient(timeout=10) as client:
                refused = await client.post(adapter + CHAT, content=b"not json")
                assert refused.status_code == 400
                page = (await client.get(adapter + "/metrics")).text
    return [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    ]


@pytest.fixture(scope="module")
def scraped() -> list[Sample]:
    return asyncio.run(scrape_after_traffic())


def selects(matchers: str, labels: dict[str, str]) -> bool:
    for name, op, value in MATCHER.findall(matchers):
        actual = labels.get(name, "")
        full = re.fullmatch(value, actual) is not None
        wanted = {"=": actual == value, "!=": actual != value, "=~": full, "!~": not full}[op]
        if not wanted:
            return False
    return True


def test_the_dashboard_has_panels_for_what_the_issue_asks() -> None:
    text = " ".join(expr for _, expr in panel_queries())
    for metric in (
        "sse_adapter_requests_total",
        "sse_adapter_active_streams",
        "sse_adapter_time_to_first_event_seconds_bucket",
        "sse_adapter_stream_duration_seconds_bucket",
        "sse_adapter_heartbeats_total",
        "sse_adapter_repairs_total",
        "sse_adapter_streams_without_usage_total",
        "sse_adapter_upstream_errors_total",
    ):
        assert metric in text, metric


@pytest.mark.parametrize(("title", "expr"), panel_queries(), ids=[title for title, _ in panel_queries()])
def test_every_panel_query_names_series_the_running_adapter_exports(
    scraped: list[Sample], title: str, expr: str
) -> None:
    used = METRIC.findall(expr)
    assert used, f"{title}: no sse_adapter metric in {expr}"
    grouped = {
        label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()
    }
    for metric, matchers in used:
        samples = [labels for name, labels in scraped if name == metric]
        assert samples, f"{title}: the adapter exports no {metric}"
        carried = {label for labels in samples for label in labels}
        assert {name for name, _, _ in MATCHER.findall(matchers)} <= carried, (title, matchers)
        assert any(selects(matchers, labels) for labels in samples), f"{title}: {matchers} selects nothing"
    for label in grouped:
        assert any(label in labels for metric, _ in used for name, labels in scraped if name == metric), (
            f"{title}: no series of its metrics carries {label!r}"
        )


def test_the_scrape_sees_the_traffic_it_was_given(scraped: list[Sample]) -> None:
    """The traffic above really makes the series the panels need (else the checks prove nothing)."""
    names = {name for name, _ in scraped}
    for needed in (
        "sse_adapter_heartbeats_total",
        "sse_adapter_repairs_total",
        "sse_adapter_upstream_errors_total",
        "sse_adapter_streams_without_usage_total",
    ):
        assert needed in names
    statuses = {labels["status"] for name, labels in scraped if name == "sse_adapter_requests_total"}
    assert {"200", "400"} <= statuses


def test_the_dashboard_reads_the_provisioned_prometheus() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    [variable] = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in dashboard["panels"]:
        for holder in (panel, *panel["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = provisioned["datasources"]
    assert (source["type"], source["isDefault"]) == ("prometheus", True)  # the variable's default
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
