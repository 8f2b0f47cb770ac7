"""``sse-adapter demo``: the product at work, with no model server at hand.

For each dialect, one request goes straight to the embedded fake model
server and one through the adapter in front of it, at the same time. Both
are read as the end client would read them, and shown side by side: the
text received, the heartbeats, the longest silence, the errors surfaced,
and the repairs the adapter made. On chat the end client is behind One-API;
on ``/v1/responses`` and ``/v1/messages`` it is Codex or Claude Code behind
new-api. Every dialect streams at once, so the whole run takes about as
long as the slowest (the thinking ones).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sse_adapter.repair.format import Format
from sse_adapter.server import serving
from sse_adapter.settings import Settings
from sse_adapter.tools.agentclient import FORMATS, PATHS, AgentView, faults, read_through_new_api
from sse_adapter.tools.demo_upstream import DIALECTS, DemoDialect, demo_upstream, transcript
from sse_adapter.tools.endclient import EndClientView, read_through_one_api
from sse_adapter.tools.quirks import describe, framing_quirks, read_as_relay, read_typed, typed_quirks

__all__ = ["Outcome", "Verdict", "dialects_for", "judge", "judge_typed", "run_demo"]

HEARTBEAT_INTERVAL = 1.0
# A silence the end client lives through longer than this means no keep-alive reached it;
# a few intervals, so that a loaded machine's late timer is not taken for a missing heartbeat.
SILENCE_LIMIT = 3 * HEARTBEAT_INTERVAL
CHAT = PATHS[Format.CHAT]
_CLIENT = {
    Format.CHAT: "the end client behind One-API",
    Format.RESPONSES: "Codex behind new-api",
    Format.MESSAGES: "Claude Code behind new-api",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one route went, as the end client behind One-API saw it."""

    text: str
    heartbeats: int
    longest_silence: float
    errors: tuple[str, ...]
    problems: tuple[str, ...]
    calls: tuple[str, ...] = ()  # the tool calls the client rebuilt, as name(arguments)
    terminals: tuple[str, ...] = ()  # Responses and Messages: the events that ended the stream

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "clean" if self.clean else "BROKEN: " + "; ".join(self.problems)


@dataclass(frozen=True, slots=True)
class Verdict:
    dialect: DemoDialect
    direct: Outcome
    adapted: Outcome
    framing: tuple[str, ...]
    repairs: tuple[str, ...]


def judge(view: EndClientView, dialect: DemoDialect) -> Outcome:
    """What went wrong for the end client, against what the model server meant to say."""
    problems: list[str] = []
    try:
        text, heartbeats, errors = view.text(), view.heartbeats(), tuple(view.errors())
    except orjson.JSONDecodeError:
        text, heartbeats, errors = "", 0, ()
        problems.append("a chunk the client cannot parse")
    if text != dialect.text:
        problems.append("text lost" if not text else "text garbled")
    calls = _judge_calls(view, dialect, problems) if dialect.calls else ()
    if dialect.error is not None and not any(dialect.error in error for error in errors):
        problems.append("the upstream's error was hidden")
    if view.status == 200 and view.dones() != 1:
        problems.append(f"{view.dones()} [DONE]")
    silence = view.longest_silence()
    if silence > SILENCE_LIMIT:
        problems.append(f"silent for {silence:.1f} s")
    return Outcome(text, heartbeats, silence, errors, tuple(problems), calls)


def judge_typed(view: AgentView, dialect: DemoDialect) -> Outcome:
    """What went wrong for Codex or Claude Code behind new-api, against what the server meant."""
    problems = faults(view, dialect.text, dialect.error, dialect.failure)
    try:
        text, errors, terminals = view.text(), tuple(view.errors()), tuple(view.terminals())
    except (orjson.JSONDecodeError, TypeError):
        text, errors, terminals = "", (), ()
    silence = view.longest_silence()
    if silence > SILENCE_LIMIT:
        problems.append(f"silent for {silence:.1f} s")
    return Outcome(text, view.heartbeats(), silence, errors, tuple(problems), terminals=terminals)


def _judge_calls(view: EndClientView, dialect: DemoDialect, problems: list[str]) -> tuple[str, ...]:
    """The tool calls an OpenAI client rebuilds, which must be those the model made."""
    try:
        calls = view.tool_calls()
    except (ValueError, orjson.JSONDecodeError):
        problems.append("tool calls the client cannot rebuild")
        return ()
    if [(call["name"], call["arguments"]) for call in calls] != list(dialect.calls):
        problems.append("tool calls garbled")
    if not all(call["id"] and call["type"] == "function" for call in calls):
        problems.append("a tool call without its id or type")
    if view.finish_reason() != "tool_calls":
        problems.append(f"finish_reason {view.finish_reason()!r} after tool calls")
    return tuple(f"{call['name']}({call['arguments']})" for call in calls)


async def compare(dialect: DemoDialect, upstream: str, adapter: str, client: httpx.AsyncClient) -> Verdict:
    if dialect.form is not Format.CHAT:
        return await _compare_typed(dialect, upstream, adapter, client)
    body = {"model": dialect.name, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    direct, adapted = await asyncio.gather(
        read_through_one_api(client, upstream + CHAT, body),
        read_through_one_api(client, adapter + CHAT, body),
    )
    raw = transcript(dialect)
    return Verdict(
        dialect,
        judge(direct, dialect),
        judge(adapted, dialect),
        tuple(describe(framing_quirks(raw))),
        tuple(describe(read_as_relay(raw).repairs)),
    )


def request_body(form: Format, model: str) -> dict[str, Any]:
    """A small streaming request in the route's own format."""
    if form is Format.RESPONSES:
        return {"model": model, "input": "hi", "stream": True}
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _compare_typed(
    dialect: DemoDialect, upstream: str, adapter: str, client: httpx.AsyncClient
) -> Verdict:
    form, body = dialect.form, request_body(dialect.form, dialect.name)
    direct, adapted = await asyncio.gather(
        read_through_new_api(client, upstream + dialect.path, form, body),
        read_through_new_api(client, adapter + dialect.path, form, body),
    )
    raw = transcript(dialect)
    return Verdict(
        dialect,
        judge_typed(direct, dialect),
        judge_typed(adapted, dialect),
        tuple(describe(typed_quirks(raw, form))),
        tuple(describe(read_typed(raw, form).repairs)),
    )


async def run_demo(
    dialects: Sequence[DemoDialect], think_seconds: float, serve: bool, port: int | None, console: Console
) -> list[Verdict]:
    verdicts: list[Verdict] = []
    adapter_port = port if port is not None else (8000 if serve else 0)
    upstream_port = adapter_port + 1 if adapter_port else 0
    async with demo_upstream(think_seconds, port=upstream_port) as upstream:
        settings = Settings(upstream=upstream, port=adapter_port, heartbeat_interval=HEARTBEAT_INTERVAL)
        async with serving(settings, log_level="error") as adapter:
            async with httpx.AsyncClient(timeout=think_seconds + 30) as client:
                # all at once, shown in order: the run lasts about as long as its slowest dialect
                runs = [asyncio.ensure_future(compare(d, upstream, adapter, client)) for d in dialects]
                try:
                    for dialect, run in zip(dialects, runs, strict=True):
                        with console.status(_waiting(dialect, think_seconds)):
                            verdict = await run
                        show(verdict, console)
                        verdicts.append(verdict)
                finally:
                    for run in runs:
                        run.cancel()
            if len(verdicts) > 1:
                show_summary(verdicts, console)
            if serve:
                show_how_to_try(upstream, adapter, console)
                await asyncio.Event().wait()  # until Ctrl-C
    return verdicts


def _waiting(dialect: DemoDialect, think_seconds: float) -> str:
    pause = f" (it thinks for {think_seconds:g} s first)" if dialect.thinks else ""
    return f"Streaming [bold]{dialect.name}[/] directly and through sse-adapter{pause}..."


def _errors(outcome: Outcome) -> str:
    return escape("\n".join(outcome.errors)) or "none"


def show(verdict: Verdict, console: Console) -> None:
    direct, adapted, dialect = verdict.direct, verdict.adapted, verdict.dialect
    title = f"[bold]{dialect.name}[/] ({dialect.path}): {escape(dialect.about)}"
    table = Table(title=title, title_justify="left")
    table.add_column(_CLIENT[dialect.form], style="bold")
    table.add_column("direct to the model server")
    table.add_column("through sse-adapter")
    table.add_row("text received", _text(direct), _text(adapted))
    if dialect.calls:
        table.add_row("tool calls rebuilt", _calls(direct), _calls(adapted))
    table.add_row("heartbeats seen", str(direct.heartbeats), str(adapted.heartbeats))
    table.add_row("longest silence", f"{direct.longest_silence:.1f} s", f"{adapted.longest_silence:.1f} s")
    table.add_row("errors surfaced", _errors(direct), _errors(adapted))
    if dialect.form is not Format.CHAT:
        table.add_row("terminal event", _terminals(direct), _terminals(adapted))
    table.add_row("verdict", _styled(direct), _styled(adapted))
    console.print(table)
    console.print("  what the server sent: " + escape(", ".join(verdict.framing) or "nothing unusual"))
    console.print("  repairs the adapter made: " + escape(", ".join(verdict.repairs) or "none needed"))
    if dialect.thinks:
        console.print(_silence_story(verdict))
    console.print()


def _silence_story(verdict: Verdict) -> str:
    heard, beats = f"{verdict.direct.longest_silence:.1f} s", verdict.adapted.heartbeats
    every = f"every {HEARTBEAT_INTERVAL:g} s ({beats} in all)"
    if verdict.dialect.form is Format.RESPONSES:
        return (
            f"  Direct, Codex heard nothing for {heard}: its idle timer counts only typed events, so comment "
            f"pings would not have helped either. Through the adapter a keepalive event reached it {every}."
        )
    if verdict.dialect.form is Format.MESSAGES:
        return (
            f"  Direct, Claude Code heard nothing for {heard}: past its watchdog it sends the whole "
            "request again, a second generation on the server. Through the adapter an `event: ping` "
            f"reached it {every}."
        )
    return (
        f"  Direct, the client heard nothing for {heard}: nginx and AWS ALB cut a connection silent for "
        f"60 s, Cloudflare for 100 s. Through the adapter a heartbeat reached it {every}."
    )


def show_summary(verdicts: Sequence[Verdict], console: Console) -> None:
    table = Table(title="[bold]Summary[/]", title_justify="left")
    table.add_column("dialect", style="bold")
    table.add_column("direct to the model server")
    table.add_column("through sse-adapter")
    for verdict in verdicts:
        table.add_row(verdict.dialect.name, _styled(verdict.direct), _styled(verdict.adapted))
    console.print(table)


def _text(outcome: Outcome) -> str:
    return escape(repr(outcome.text)) if outcome.text else "(nothing)"


def _terminals(outcome: Outcome) -> str:
    return escape(", ".join(outcome.terminals)) or "none"


def _calls(outcome: Outcome) -> str:
    return escape("\n".join(outcome.calls)) or "(none)"


def _styled(outcome: Outcome) -> str:
    return f"[green]{escape(outcome.verdict)}[/]" if outcome.clean else f"[red]{escape(outcome.verdict)}[/]"


def show_how_to_try(upstream: str, adapter: str, console: Console) -> None:
    console.print(f"Demo model server: {upstream} (models: {', '.join(DIALECTS)})")
    console.print(f"sse-adapter:       {adapter}")
    console.print(f"One-API channel:   type 自定义渠道 (custom), base URL {adapter}\n")
    console.print("Try the same request both ways (any model above, on its route):", highlight=False)
    examples = (
        (CHAT, _CHAT_BODY),
        (PATHS[Format.RESPONSES], request_body(Format.RESPONSES, "responses-thinking")),
    )
    for path, request in examples:
        body = orjson.dumps(request).decode()
        for base in (upstream, adapter):
            console.print(
                f"  curl -N {base}{path} -H 'Content-Type: application/json' -d '{body}'",
                highlight=False,
                soft_wrap=True,
            )
    console.print(
        "\nOr judge it as One-API or new-api would, directly and through the adapter:", highlight=False
    )
    for option, model in (("", "tgi-2.0"), (" --format responses", "responses-error")):
        probe = f"  sse-adapter probe{option} --upstream {upstream} --model {model} --via {adapter}"
        console.print(probe, highlight=False, soft_wrap=True)
    console.print("\nPress Ctrl-C to stop.")


_CHAT_BODY: dict[str, Any] = {
    "model": "tgi-2.0",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def dialects_for(name: str, form: str) -> list[DemoDialect]:
    """The dialects to show: one by name, or all of a format (``all``: every format)."""
    if name != "all":
        return [DIALECTS[name]]
    return [d for d in DIALECTS.values() if form == "all" or d.form is FORMATS[form]]
