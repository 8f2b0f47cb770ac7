"""What an agent client behind new-api sees of a Responses or Messages stream, and when.

Reads a streaming response the way new-api would relay it (the rules of
:mod:`sse_adapter.tools.newapi`) and keeps every event with the time it
would reach the client: Codex on ``/v1/responses``, Claude Code on
``/v1/messages``. ``faults`` says what such a client gets wrong from it
(shared/formats.md): the demo and the probe give their verdicts with it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson

from sse_adapter.repair.format import Format
from sse_adapter.sse.decoder import SSEDecoder
from sse_adapter.tools.newapi import NewAPIRelay

__all__ = ["FORMATS", "PATHS", "TERMINALS", "AgentView", "faults", "read_through_new_api"]

FORMATS: Mapping[str, Format] = {
    "chat": Format.CHAT,
    "responses": Format.RESPONSES,
    "messages": Format.MESSAGES,
}
PATHS: Mapping[Format, str] = {
    Format.CHAT: "/v1/chat/completions",
    Format.RESPONSES: "/v1/responses",
    Format.MESSAGES: "/v1/messages",
}
# The events that end a stream: exactly one must come, and it must say how it ended.
TERMINALS: Mapping[Format, frozenset[str]] = {
    Format.RESPONSES: frozenset({"response.completed", "response.incomplete", "response.failed"}),
    Format.MESSAGES: frozenset({"message_stop", "error"}),
}
_FAILED = {Format.RESPONSES: "response.failed", Format.MESSAGES: "error"}
_FIRST = {Format.RESPONSES: "response.created", Format.MESSAGES: "message_start"}
_HEARTBEAT = {Format.RESPONSES: "keepalive", Format.MESSAGES: "ping"}


@dataclass
class AgentView:
    """One Responses or Messages stream as the agent client behind new-api saw it."""

    form: Format
    status: int
    headers: httpx.Headers
    raw: bytes = b""  # exactly what the server wrote
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds, event name, data)
    reads: list[tuple[float, bytes]] = field(default_factory=list)  # what came off the socket, and when
    duration: float = 0.0
    cut: str | None = None  # the transport error that ended the body early, if one did

    @property
    def typed(self) -> list[tuple[str, dict[str, Any]]]:
        """(event name, JSON object) of every event: new-api sends on nothing else."""
        return [(name, orjson.loads(data)) for _, name, data in self.events]

    def names(self) -> list[str]:
        return [name for _, name, _ in self.events]

    def text(self) -> str:
        """The answer's text: Codex's output_text deltas, Claude Code's text_delta blocks."""
        if self.form is Format.RESPONSES:
            return "".join(
                body.get("delta") or ""
                for name, body in self.typed
                if name == "response.output_text.delta" and isinstance(body.get("delta"), str)
            )
        parts: list[str] = []
        for name, body in self.typed:
            delta = body.get("delta") if name == "content_block_delta" else None
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                parts.append(str(delta.get("text") or ""))
        return "".join(parts)

    def terminals(self) -> list[str]:
        return [name for name in self.names() if name in TERMINALS[self.form]]

    def failed(self) -> bool:
        """The stream ended in the format's failure event."""
        return _FAILED[self.form] in self.terminals()

    def errors(self) -> list[str]:
        """The error messages the client was shown: an error status's body, or
        the format's failure events. Codex shows ``response.failed``'s message
        and drops an ``error`` event's (issue 24, measured)."""
        if self.status != 200:
            try:
                error = orjson.loads(self.raw)["error"]
                return [str(error["message"])]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return [f"HTTP {self.status}"]
        shown: list[str] = []
        for name, body in self.typed:
            if name != _FAILED[self.form]:
                continue
            holder = body.get("response") if self.form is Format.RESPONSES else body
            error = holder.get("error") if isinstance(holder, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            shown.append(str(message) if message else f"{name} with no message")
        return shown

    def heartbeats(self) -> int:
        """The typed heartbeats that reached the client: keepalive events, or pings."""
        return self.names().count(_HEARTBEAT[self.form])

    def sequence_faults(self) -> int:
        """Responses: the events whose ``sequence_number`` is not one above the one before."""
        numbers = [body.get("sequence_number") for _, body in self.typed]
        return sum(
            type(later) is not int or type(earlier) is not int or later != earlier + 1
            for earlier, later in itertools.pairwise(numbers)
        ) + sum(type(number) is not int for number in numbers[:1])

    def response_ids(self) -> set[str]:
        """Responses: the ids of every ``response`` object the stream carried."""
        found: set[str] = set()
        for _, body in self.typed:
            response = body.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                found.add(response["id"])
        return found

    def first_event(self) -> str | None:
        """The first event the client's accumulator reads (heartbeats it drops)."""
        return next((name for name in self.names() if name != _HEARTBEAT[self.form]), None)

    def gaps(self) -> list[float]:
        """The silences the client lived through, the wait for the first event included."""
        times = [0.0] + [at for at, _, _ in self.events]
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def longest_silence(self) -> float:
        return max(self.gaps(), default=self.duration)


def faults(view: AgentView, text: str, error: str | None, fails: bool) -> list[str]:
    """What goes wrong for the agent client, against what the server meant:
    its ``text``, its ``error`` message if it gave one, and whether the
    stream ``fails`` (an error, or a cut that said nothing)."""
    if view.status != 200:
        shown = view.errors()
        return [] if error is not None and any(error in seen for seen in shown) else [f"HTTP {view.status}"]
    try:
        got = view.text()
        names, terminals, shown = view.names(), view.terminals(), view.errors()
    except (orjson.JSONDecodeError, TypeError):
        return ["an event the client cannot parse"]
    problems: list[str] = []
    if got != text:
        problems.append("text lost" if not got else "text garbled")
    if not terminals:
        problems.append("no terminal event")
    elif len(terminals) > 1:
        problems.append(f"{len(terminals)} terminal events")
    elif names[-1] != terminals[0]:
        problems.append(f"events after {terminals[0]}")
    elif fails and not view.failed():
        problems.append(f"a failure that ends in {terminals[0]}")
    if error is not None and not any(error in message for message in shown):
        problems.append("the upstream's error was hidden")
    if names and view.first_event() != _FIRST[view.form]:
        problems.append(f"the first event is not {_FIRST[view.form]}")
    if view.form is Format.RESPONSES:
        if view.sequence_faults():
            problems.append("sequence numbers skip or repeat")
        if len(view.response_ids()) > 1:
            problems.append(f"{len(view.response_ids())} response ids")
    return problems


async def read_through_new_api(
    client: httpx.AsyncClient,
    url: str,
    form: Format,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> AgentView:
    """POST a streaming request and read the answer as new-api's client would get it.
    A connection cut mid-body ends the stream, as it ends new-api's."""
    start = anyio.current_time()
    relay, decoder = NewAPIRelay(), SSEDecoder()
    async with client.stream("POST", url, json=body, headers=headers) as response:
        view = AgentView(form, response.status_code, response.headers)
        relayed = response.status_code == 200 and "json" not in response.headers.get("content-type", "")
        raw = bytearray()
        try:
            async for piece in response.aiter_raw():
                raw += piece
                now = anyio.current_time() - start
                view.reads.append((now, piece))
                if relayed:
                    _arrive(view, now, decoder.feed(b"".join(relay.feed(piece))))
        except httpx.TransportError as error:
            view.cut = f"{type(error).__name__}: {error}"
    view.duration = anyio.current_time() - start
    if relayed:
        _arrive(view, view.duration, decoder.feed(b"".join(relay.close())) + decoder.flush())
    view.raw = bytes(raw)
    return view


def _arrive(view: AgentView, now: float, events: list[Any]) -> None:
    view.events += [(now, event.event, event.data) for event in events]
