"""``sse-adapter probe --format responses|messages``: a Responses or Messages
route tested as an agent client behind new-api gets it, and what the adapter
would repair in it.

The same two requests as the chat probe (whole, then streamed), in the
route's own format. The stream is read through the new-api double
(:mod:`.newapi`) and judged with :func:`.agentclient.faults` against what the
server meant, which the adapter's own pipeline and that format's repairer
read from the same bytes (:func:`.quirks.read_typed`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sse_adapter.proxy.upstream import why
from sse_adapter.repair.format import Format
from sse_adapter.repair.responses import REASONING_DELTAS
from sse_adapter.settings import Settings
from sse_adapter.tools.agentclient import PATHS, AgentView, faults, read_through_new_api
from sse_adapter.tools.newapi import nonstream_error
from sse_adapter.tools.quirks import LABELS, no_text, read_typed, server_said, shown_text, typed_quirks

__all__ = ["TypedRouteReport", "judge_route", "ms", "nonstream_read", "probe_typed", "show_typed", "verdict"]

_TIMEOUT = httpx.Timeout(10.0, read=600.0)  # a reasoning model may think for minutes
_PROMPT = "Say hello in five words."
_OUTPUT = {Format.RESPONSES: "output", Format.MESSAGES: "content"}
_HEARTBEAT = {Format.RESPONSES: "keepalive events", Format.MESSAGES: "pings"}
# nginx and AWS ALB cut a connection silent for this long: a silence past it is a broken stream.
_CUT_AFTER = 60.0


@dataclass
class TypedRouteReport:
    """What one Responses or Messages route (the model server, or something in front of it) did."""

    url: str
    route: str
    nonstream_status: int | None = None
    nonstream_error: str | None = None
    nonstream_server_error: str | None = None  # the server's own words, when it answered an error status
    stream_status: int | None = None
    first_byte_ms: float | None = None
    first_event_ms: float | None = None
    longest_silence_s: float | None = None
    heartbeats: int = 0  # the typed heartbeats the client got: keepalive events, or pings
    text: str = ""
    reasoning: str = ""  # what the client gets as reasoning: summary or thinking deltas
    errors: list[str] = field(default_factory=list)
    server_error: str | None = None  # the server's own message, when its stream failed
    terminal: list[str] = field(default_factory=list)  # the events that ended the stream
    quirks: dict[str, int] = field(default_factory=dict)  # what the bytes show
    repairs: dict[str, int] = field(default_factory=dict)  # what sse-adapter would repair in them
    new_api_relays: bool = False
    reasons: list[str] = field(default_factory=list)
    usage: str = "-"  # server's, counted (exact|approximate) or none, through the adapter; direct only

    @property
    def relays(self) -> bool:
        return self.new_api_relays

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def request(form: Format, model: str, api_key: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """A small whole request in the route's format, and its headers: Anthropic's
    clients send the key as ``x-api-key`` with an ``anthropic-version``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if form is Format.RESPONSES:
        return {"model": model, "input": _PROMPT, "max_output_tokens": 32}, headers
    if api_key:
        headers["x-api-key"] = api_key
    headers["anthropic-version"] = "2023-06-01"
    return {"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": _PROMPT}]}, headers


async def probe_typed(url: str, model: str, api_key: str | None, form: Format) -> TypedRouteReport:
    report = TypedRouteReport(url.rstrip("/"), PATHS[form])
    body, headers = request(form, model, api_key)
    async with httpx.AsyncClient(timeout=_TIMEOUT, headers=headers) as client:
        try:
            whole = await client.post(report.url + report.route, json=body)
            report.nonstream_status = whole.status_code
            report.nonstream_error = nonstream_error(whole.status_code, whole.content, _OUTPUT[form])
            if whole.status_code != 200:  # new-api says only the status: the server's words are shown too
                content_type = whole.headers.get("content-type", "")
                report.nonstream_server_error = server_said(whole.status_code, content_type, whole.content)
        except httpx.HTTPError as error:
            report.nonstream_error = why(error)
        try:
            view = await read_through_new_api(
                client, report.url + report.route, form, {**body, "stream": True}
            )
        except httpx.HTTPError as error:
            report.reasons.append(f"the stream request failed: {why(error)}")
            return report
    judge_route(report, view)
    return report


def judge_route(report: TypedRouteReport, view: AgentView) -> None:
    """What new-api's client got, against what the server meant to say."""
    report.stream_status = view.status
    report.first_byte_ms = view.reads[0][0] * 1000 if view.reads else None
    report.first_event_ms = view.events[0][0] * 1000 if view.events else None
    content_type = view.headers.get("content-type", "")
    if view.status != 200 or not content_type.startswith("text/event-stream"):
        report.server_error = server_said(view.status, content_type, view.raw)
        report.errors = view.errors()
        report.reasons.append(
            f"new-api treats status {view.status} with {content_type or 'no type'} as an error"
        )
        return
    meant = read_typed(view.raw, view.form)
    report.quirks = dict(typed_quirks(view.raw, view.form))
    report.repairs = dict(meant.repairs)
    report.server_error = meant.error
    interval = Settings(upstream="http://probe").heartbeat_interval
    if silences := sum(gap > interval for gap in view.gaps()):
        report.repairs["silences_filled"] = silences
    report.longest_silence_s = view.longest_silence()
    report.heartbeats = view.heartbeats()
    report.terminal = view.terminals()
    report.text, report.errors = view.text(), view.errors()
    report.reasoning = _reasoning(view)
    report.reasons += faults(view, meant.text, meant.error, meant.failed)
    if meant.failed and not meant.text:
        said = meant.error or (report.errors[0] if report.errors else "no word why")
        report.reasons.append(f"the stream fails before any text: {said}")
    if not report.text and not report.reasons:
        report.reasons.append(no_text(report.reasoning, _ran_out(view)))
    if report.longest_silence_s > _CUT_AFTER:
        report.reasons.append(
            f"silent for {report.longest_silence_s:.0f} s with no typed heartbeat: nginx and AWS ALB cut a "
            f"connection silent for {_CUT_AFTER:.0f} s"
        )
    report.new_api_relays = not report.reasons


def show_typed(reports: dict[str, TypedRouteReport], console: Console) -> None:
    route = next(iter(reports.values())).route
    form = next(form for form, path in PATHS.items() if path == route)
    table = Table(
        title=f"sse-adapter probe: {route}", title_justify="left", caption=_SIMULATED, caption_justify="left"
    )
    table.add_column("", style="bold")
    for name, report in reports.items():
        table.add_column(f"{name}\n{escape(report.url)}")

    def row(label: str, cell: Any) -> None:
        table.add_row(label, *(escape(str(cell(report))) for report in reports.values()))

    row("non-stream status", lambda r: r.nonstream_status if r.nonstream_status is not None else "-")
    row("non-stream, new-api reads", nonstream_read)
    row("stream status", lambda r: r.stream_status if r.stream_status is not None else "-")
    row("first byte / first event", lambda r: f"{ms(r.first_byte_ms)} / {ms(r.first_event_ms)}")
    row(
        "longest silence",
        lambda r: f"{r.longest_silence_s:.1f} s" if r.longest_silence_s is not None else "-",
    )
    row(f"{_HEARTBEAT[form]} it gets (simulated)", lambda r: r.heartbeats)
    row("text new-api's client gets (simulated)", lambda r: shown_text(r.text, r.reasoning))
    row("error the server sent", lambda r: r.server_error or "none")
    row("errors it is shown (simulated)", lambda r: "; ".join(r.errors) or "none")
    row("terminal event (simulated)", lambda r: ", ".join(r.terminal) or "none")
    row("what the bytes show", lambda r: _listed(r.quirks) or "nothing unusual")
    row("what sse-adapter repairs in them (simulated)", lambda r: _listed(r.repairs) or "nothing")
    row("usage, through sse-adapter", lambda r: r.usage)
    table.add_row(
        "new-api would relay this stream (simulated)",
        *(verdict(r.new_api_relays, r.reasons) for r in reports.values()),
    )
    console.print(table)


def _reasoning(view: AgentView) -> str:
    """Responses' reasoning deltas, or Messages' thinking deltas."""
    parts: list[str] = []
    for name, body in view.typed:
        delta = body.get("delta")
        if name in REASONING_DELTAS and isinstance(delta, str):
            parts.append(delta)
        elif (
            name == "content_block_delta"
            and isinstance(delta, dict)
            and delta.get("type") == "thinking_delta"
        ):
            parts.append(str(delta.get("thinking") or ""))
    return "".join(parts)


def _ran_out(view: AgentView) -> bool:
    """The answer stopped at its token limit: ``response.incomplete``, or ``stop_reason: max_tokens``."""
    return any(
        name == "response.incomplete"
        or (isinstance(delta := body.get("delta"), dict) and delta.get("stop_reason") == "max_tokens")
        for name, body in view.typed
    )


_SIMULATED = (
    "(simulated): new-api and its client by the rules of the tests' new-api double, sse-adapter's repairs "
    "by its own pipeline over the same bytes; every other row is measured"
)


def _listed(found: dict[str, int]) -> str:
    return ", ".join(f"{LABELS.get(name, name)} ({count})" for name, count in found.items())


def verdict(relays: bool, reasons: list[str], said: str = "") -> str:
    """A probe table's verdict cell: yes (with what was seen), or no and why."""
    if relays:
        return "[green]yes[/]" + (" (" + escape(said) + ")" if said else "")
    return "[red]no[/], because " + escape("; ".join(reasons))


def nonstream_read(report: Any) -> str:
    """What the gateway makes of the non-stream answer, with the server's own words on an error."""
    if report.nonstream_status and not report.nonstream_error:
        return "ok"
    said = report.nonstream_server_error
    return f"error: {report.nonstream_error}" + (f" (the server: {said})" if said else "")


def ms(value: float | None) -> str:
    return f"{value:.0f} ms" if value is not None else "-"
