"""``sse-adapter probe``: test a model server directly, stream and not, and
say whether One-API would relay its stream, and why; optionally run the same
requests through the adapter (or a One-API) and compare.

The verdict uses the tests' One-API double: what its client would get,
against what the server meant, which the adapter's own decoder and repair
pipeline read from the same bytes. ``--format responses`` and ``messages``
probe those routes as new-api's client gets them (:mod:`.probe_typed`);
:func:`probe_routes` runs whichever routes were asked for.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sse_adapter.errors import AdapterError
from sse_adapter.proxy.upstream import why
from sse_adapter.repair.format import Format
from sse_adapter.sse.decoder import SSEDecoder
from sse_adapter.tools.agentclient import FORMATS
from sse_adapter.tools.endclient import EndClientView, read_through_one_api
from sse_adapter.tools.oneapi import accepts_stream, nonstream_error
from sse_adapter.tools.probe_typed import (
    TypedRouteReport,
    ms,
    nonstream_read,
    probe_typed,
    request,
    show_typed,
    verdict,
)
from sse_adapter.tools.quirks import LABELS, framing_quirks, no_text, read_as_relay, server_said, shown_text
from sse_adapter.tools.usage_source import chat_request, usage_source

__all__ = ["ProbeRun", "PromptReport", "RouteReport", "first_model", "probe", "probe_routes", "show"]

CHAT = "/v1/chat/completions"
_TIMEOUT = httpx.Timeout(10.0, read=600.0)  # a reasoning model may think for minutes
_PROMPT = [{"role": "user", "content": "Say hello in five words."}]
_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# Beside the short answer above, the shapes that break where a short one does not:
# a long answer (lines and reads past the first few), and a tool call.
_MORE_PROMPTS: dict[str, dict[str, Any]] = {
    "long answer": {
        "messages": [{"role": "user", "content": "Write about 300 words on the history of the bicycle."}],
        "max_tokens": 600,
    },
    "tool call": {
        "messages": [{"role": "user", "content": "What is the weather in Paris? Use the get_weather tool."}],
        "tools": [_WEATHER],
        "max_tokens": 200,
    },
}
_OPENAI_CHUNK_KEYS = frozenset(
    {"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier", "error"}
)


@dataclass
class PromptReport:
    """One more prompt's stream, judged as the first one is."""

    status: int | None = None
    relays: bool | None = None  # None: not judged (the server takes no tools)
    text_chars: int = 0
    tool_calls: list[str] = field(default_factory=list)  # the names the client gets
    finish_reason: str | None = None
    note: str = ""  # what came instead of a judgement
    reasons: list[str] = field(default_factory=list)


@dataclass
class RouteReport:
    """What one route (the model server itself, or something in front of it) did."""

    url: str
    nonstream_status: int | None = None
    nonstream_error: str | None = None
    nonstream_server_error: str | None = None  # the server's own words, when it answered an error status
    stream_status: int | None = None
    first_byte_ms: float | None = None
    first_token_ms: float | None = None
    tokens_per_s: float | None = None
    ping_interval_s: float | None = None
    text: str = ""
    reasoning: str = ""  # what the client gets as reasoning (reasoning_content, or reasoning)
    errors: list[str] = field(default_factory=list)
    server_error: str | None = None  # the server's own message, when its stream failed
    quirks: dict[str, int] = field(default_factory=dict)  # what the bytes show
    repairs: dict[str, int] = field(default_factory=dict)  # what sse-adapter would repair in them
    one_api_relays: bool = False  # the first prompt's stream
    reasons: list[str] = field(default_factory=list)
    prompts: dict[str, PromptReport] = field(default_factory=dict)  # the others, by name
    usage: str = "-"  # server's, counted (exact|approximate) or none, through the adapter; direct only

    @property
    def relays(self) -> bool:
        """Every prompt's stream relays (a tool call the server cannot make is no failure)."""
        return self.one_api_relays and all(prompt.relays is not False for prompt in self.prompts.values())

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ProbeRun:
    """Every route probed: for each format, its reports by name (``direct``, ``via``)."""

    model: str
    why: str
    routes: dict[Format, dict[str, RouteReport | TypedRouteReport]]
    via: bool

    @property
    def relays(self) -> bool:
        """Whether the route the traffic takes (``via`` if given) relays cleanly, in every format probed."""
        return all(reports["via" if self.via else "direct"].relays for reports in self.routes.values())

    def as_json(self) -> dict[str, Any]:
        """One format: its reports at the top, as ever; several: each under its name."""
        names = {form: name for name, form in FORMATS.items()}
        shown: dict[str, Any] = {
            names[form]: {name: report.as_json() for name, report in reports.items()}
            for form, reports in self.routes.items()
        }
        if len(shown) == 1:
            [shown] = shown.values()
        return {**shown, "model": {"name": self.model, "why": self.why}, "relays": self.relays}

    def show(self, console: Console) -> None:
        console.print(f"model asked for: {escape(self.model)} ({escape(self.why)})", highlight=False)
        for form, reports in self.routes.items():
            if form is Format.CHAT:
                show({name: r for name, r in reports.items() if isinstance(r, RouteReport)}, console)
            else:
                show_typed(
                    {name: r for name, r in reports.items() if isinstance(r, TypedRouteReport)}, console
                )


async def probe_routes(
    upstream: str, via: str | None, model: str | None, api_key: str | None, forms: list[Format]
) -> ProbeRun:
    """Each format's route, directly and then through ``via``."""
    chosen, because = (model, "--model") if model else await first_model(upstream, api_key)
    routes: dict[Format, dict[str, RouteReport | TypedRouteReport]] = {}
    for form in forms:
        reports: dict[str, RouteReport | TypedRouteReport] = {}
        for name, url in (("direct", upstream), ("via", via)):
            if url is not None:
                reports[name] = (
                    await probe(url, chosen, api_key)
                    if form is Format.CHAT
                    else await probe_typed(url, chosen, api_key, form)
                )
        reports["direct"].usage = await _usage(upstream, chosen, api_key, form)
        routes[form] = reports
    return ProbeRun(chosen, because, routes, via is not None)


async def _usage(url: str, model: str, api_key: str | None, form: Format) -> str:
    """Where the route's usage comes from, through the adapter's own app; a failure says why."""
    body = chat_request(model) if form is Format.CHAT else request(form, model, api_key)[0]
    try:
        return await usage_source(url, model, api_key, form, body)
    except (httpx.HTTPError, AdapterError) as error:
        return f"unknown: {error}"


async def first_model(url: str, api_key: str | None) -> tuple[str, str]:
    """The model to ask for, and why that one: the first the server lists;
    else "default", which TGI and llama.cpp's server answer to whatever the name."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    listing = url.rstrip("/") + "/v1/models"
    try:
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            listed = (await client.get(listing)).json()["data"]
        return str(listed[0]["id"]), f"the first of the {len(listed)} that {listing} lists"
    except (ValueError, KeyError, IndexError, TypeError):
        return "default", f"{listing} lists no model; pass --model to choose one"
    except httpx.HTTPError as error:
        return "default", f"{listing} did not answer ({why(error)}); pass --model to choose one"


async def probe(url: str, model: str, api_key: str | None) -> RouteReport:
    report = RouteReport(url.rstrip("/"))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": _PROMPT, "max_tokens": 32}
    async with httpx.AsyncClient(timeout=_TIMEOUT, headers=headers) as client:
        await _nonstream(client, report, body)
        try:
            view = await read_through_one_api(client, report.url + CHAT, {**body, "stream": True})
        except httpx.HTTPError as error:
            report.reasons.append(f"the stream request failed: {why(error)}")
            return report
        _judge(report, view)
        for name, prompt in _MORE_PROMPTS.items():
            report.prompts[name] = await _prompt(client, report.url, {"model": model, **prompt})
    return report


async def _prompt(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> PromptReport:
    """One more prompt's stream, judged; a server that refuses tools is said to, not failed."""
    try:
        view = await read_through_one_api(client, url + CHAT, {**body, "stream": True})
    except httpx.HTTPError as error:
        return PromptReport(relays=False, reasons=[f"the stream request failed: {why(error)}"])
    judged = RouteReport(url)
    _judge(judged, view)
    found = PromptReport(view.status, judged.one_api_relays, len(judged.text), reasons=judged.reasons)
    if "tools" in body and not accepts_stream(view.status, view.headers.get("content-type", "")):
        found.relays, found.reasons = None, []
        found.note = f"the server takes no tools here (status {view.status}: {judged.server_error or '-'})"
        return found
    if found.relays is not False:
        found.finish_reason = view.finish_reason()
        found.tool_calls = [call["name"] for call in _judged_calls(view, found)]
    return found


def _judged_calls(view: EndClientView, report: PromptReport) -> list[dict[str, Any]]:
    """The tool calls the client gets; a delta with no index fails the stream, as in the openai SDK."""
    try:
        return view.tool_calls()
    except ValueError as error:
        report.relays = False
        report.reasons.append(f"the openai SDK cannot read its tool calls: {error}")
        return []


async def _nonstream(client: httpx.AsyncClient, report: RouteReport, body: dict[str, Any]) -> None:
    try:
        reply = await client.post(report.url + CHAT, json=body)
    except httpx.HTTPError as error:
        report.nonstream_error = why(error)
        return
    report.nonstream_status = reply.status_code
    report.nonstream_error = nonstream_error(reply.status_code, reply.content)
    if reply.status_code != 200:  # One-API says only the status: the server's words are shown too
        content_type = reply.headers.get("content-type", "")
        report.nonstream_server_error = server_said(reply.status_code, content_type, reply.content)


def _judge(report: RouteReport, view: EndClientView) -> None:
    """What One-API's client got, against what the server meant to say."""
    report.stream_status = view.status
    report.first_byte_ms = view.frames[0][0] * 1000 if view.frames else None
    content_type = view.headers.get("content-type", "")
    meant = read_as_relay(view.raw)
    if content_type.startswith("text/event-stream"):  # an error body has no SSE framing to judge
        report.quirks = dict(framing_quirks(view.raw)) | _foreign_fields(view.raw)
        report.repairs = dict(meant.repairs)
    report.ping_interval_s = _ping_interval(view)
    content_times = _content_times(view)
    if content_times:
        report.first_token_ms = content_times[0] * 1000
        report.tokens_per_s = _rate(content_times)
    if not accepts_stream(view.status, content_type):
        report.server_error = server_said(view.status, content_type, view.raw)
        report.errors = view.errors()
        report.reasons.append(
            f"One-API treats status {view.status} with {content_type or 'no type'} as an error"
        )
        return
    report.server_error = meant.error
    try:
        report.text, report.errors = view.text(), view.errors()
        report.reasoning = _reasoning(view)
    except orjson.JSONDecodeError:
        report.reasons.append("One-API passes on a frame its client cannot parse")
    if report.text != meant.text:
        report.reasons.append(_lost_text(report.quirks))
    if meant.failed and not report.errors:
        said = f" ({meant.error})" if meant.error else ""
        report.reasons.append(
            f"the server's error{said} is dropped (a chunk with no choices): "
            "the user sees a truncated success"
        )
    if report.errors and not report.text:
        report.reasons.append(f"the stream ends in an error before any text: {report.errors[0]}")
    if view.dones() != 1:
        report.reasons.append(f"the client gets {view.dones()} [DONE]")
    if not report.text and not report.reasons and not _calls_tools(view):
        report.reasons.append(no_text(report.reasoning, view.finish_reason() == "length"))
    report.one_api_relays = not report.reasons


def _calls_tools(view: EndClientView) -> bool:
    """Whether any chunk carries a tool call: an answer, though it has no text."""
    return any(
        isinstance(delta := choice.get("delta"), dict) and delta.get("tool_calls")
        for chunk in view.chunks
        for choice in chunk.get("choices") or []
    )


def _reasoning(view: EndClientView) -> str:
    """The reasoning the client gets, under either name servers give it."""
    return "".join(
        str(delta.get("reasoning_content") or delta.get("reasoning") or "")
        for chunk in view.chunks
        for choice in chunk.get("choices") or []
        if isinstance(delta := choice.get("delta"), dict)
    )


_SIMULATED = (
    "(simulated): One-API by the rules of the tests' One-API double, sse-adapter's repairs by its own "
    "pipeline over the same bytes; every other row is measured"
)

_MIN_TOKENS, _MIN_SPAN = 5, 0.25  # below these, a rate says more about the network than the model


def _rate(times: list[float]) -> float | None:
    """Tokens a second from the first token to the last; None for too small a sample
    (a server that sends its tokens in one burst has no measurable rate)."""
    span = times[-1] - times[0]
    if len(times) < _MIN_TOKENS or span < _MIN_SPAN:
        return None
    return (len(times) - 1) / span


def _ping_interval(view: EndClientView) -> float | None:
    """The median time between reads that held a comment ping (TGI, llama.cpp, Xinference send them)."""
    times = [at for at, piece in view.reads if piece.startswith(b":") or b"\n:" in piece or b"\r:" in piece]
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(times))
    return gaps[len(gaps) // 2] if gaps else None


def _content_times(view: EndClientView) -> list[float]:
    times = []
    for at, frame in view.frames:
        try:
            chunk = orjson.loads(frame[6:])
        except orjson.JSONDecodeError:
            continue
        if isinstance(chunk, dict) and any(
            (c.get("delta") or {}).get("content") for c in chunk.get("choices") or []
        ):
            times.append(at)
    return times


def _foreign_fields(raw: bytes) -> dict[str, int]:
    """Top-level chunk fields no OpenAI client expects (llama.cpp's timings, and the like)."""
    decoder = SSEDecoder(field_events=frozenset({"error"}))
    foreign: dict[str, int] = {}
    for event in decoder.feed(raw) + decoder.flush():
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(chunk, dict):
            for key in set(chunk) - _OPENAI_CHUNK_KEYS:
                foreign[f"field:{key}"] = foreign.get(f"field:{key}", 0) + 1
    return foreign


def _lost_text(quirks: dict[str, int]) -> str:
    causes = [
        LABELS[name]
        for name in ("no_space_after_data", "cr_line_ends", "multi_line_payload", "line_over_64k")
        if quirks.get(name)
    ]
    because = f": {'; '.join(causes)}" if causes else ""
    return f"One-API's client does not get the text{because}"


def show(reports: dict[str, RouteReport], console: Console) -> None:
    table = Table(title="sse-adapter probe", title_justify="left", caption=_SIMULATED, caption_justify="left")
    table.add_column("", style="bold")
    for name, report in reports.items():
        table.add_column(f"{name}\n{escape(report.url)}")

    def row(label: str, cell: Any) -> None:
        table.add_row(label, *(escape(str(cell(report))) for report in reports.values()))

    row("non-stream status", lambda r: r.nonstream_status if r.nonstream_status is not None else "-")
    row("non-stream, One-API reads", nonstream_read)
    row("stream status", lambda r: r.stream_status if r.stream_status is not None else "-")
    row("first byte / first token", lambda r: f"{ms(r.first_byte_ms)} / {ms(r.first_token_ms)}")
    row("tokens per second", lambda r: f"{r.tokens_per_s:.1f}" if r.tokens_per_s else "-")
    row("comment pings every", lambda r: f"{r.ping_interval_s:.1f} s" if r.ping_interval_s else "-")
    row("text One-API's client gets (simulated)", lambda r: shown_text(r.text, r.reasoning))
    row("error the server sent", lambda r: r.server_error or "none")
    row("errors it is shown (simulated)", lambda r: "; ".join(r.errors) or "none")
    row(
        "what the bytes show",
        lambda r: ", ".join(f"{LABELS.get(k, k)} ({v})" for k, v in r.quirks.items()) or "nothing unusual",
    )
    row(
        "what sse-adapter repairs in them (simulated)",
        lambda r: ", ".join(f"{LABELS.get(k, k)} ({v})" for k, v in r.repairs.items()) or "nothing",
    )
    row("usage, through sse-adapter", lambda r: r.usage)
    table.add_row(
        "One-API would relay this stream (simulated)",
        *(verdict(report.one_api_relays, report.reasons) for report in reports.values()),
    )
    for name in _MORE_PROMPTS:
        table.add_row(
            f"a {name}: One-API would relay it (simulated)",
            *(_prompt_verdict(report.prompts.get(name)) for report in reports.values()),
        )
    console.print(table)


def _prompt_verdict(prompt: PromptReport | None) -> str:
    if prompt is None:
        return "- (not tried: the first stream failed)"
    if prompt.relays is None:
        return escape(prompt.note)
    calls = f", tool calls: {', '.join(prompt.tool_calls)}" if prompt.tool_calls else ""
    said = f"{prompt.text_chars:,} characters{calls}, finish: {prompt.finish_reason or '-'}"
    return verdict(prompt.relays, prompt.reasons, said)
