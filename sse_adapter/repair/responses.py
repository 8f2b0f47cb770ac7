"""OpenAI Responses streams (``/v1/responses``), repaired (pure).

What a Responses client needs (shared/formats.md): typed events whose
``sequence_number`` rises by one, one response id from the first event to
the last, ``response.created`` before anything else, and exactly one
terminal event: ``response.completed``, ``response.incomplete`` or
``response.failed``. Codex resets its idle timer only on typed events and
retries what looks transient (``server_error``), so heartbeats are typed
``keepalive`` events the adapter numbers itself, and every failure ends in
one ``response.failed`` whose ``error.code`` makes the client do the right
thing (README, "Responses").

An event that needs nothing goes out as it came, behind an ``event:`` line
named for its type (which is what new-api re-emits too).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson

from sse_adapter.errors import (
    AdapterError,
    LineTooLong,
    UpstreamReported,
)
from sse_adapter.repair.dialects import is_context_overflow, is_overloaded
from sse_adapter.repair.fitting import pieces
from sse_adapter.repair.format import Usage
from sse_adapter.repair.typed import (
    PREFIX,
    TypedStream,
    dumps,
    reported,
    typed_frame,
)
from sse_adapter.repair.usage import RESPONSES_NAMES, Verdict, count_of, usage_verdict, with_total
from sse_adapter.sse.decoder import Event

__all__ = ["REASONING_DELTAS", "ResponseIds", "ResponsesRepairer", "failure_code"]

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# The deltas whose text may be split over several events of the same type and item.
_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.refusal.delta",
    }
)
# Events that repeat text already streamed in deltas: as long as the answer,
# so no line limit can bind them. No gateway that relays this route reads
# with a 64 KiB scanner (new-api's lines go to 10 MiB and more), and no
# client limits a line: they go out whole (README, "Responses").
_WHOLE = re.compile(r"\.done$|^response\.(completed|incomplete|failed|in_progress|created|queued)$")
# Events about a content part of an item: these carry a content_index.
_PARTS = re.compile(r"content_part|output_text|reasoning_text|refusal")
_RETRY_IN = 10  # seconds a client is asked to wait when the server is full
# Where each delta's text goes in the chat turn it is counted as (repair/turns.py).
REASONING_DELTAS = frozenset({"response.reasoning_text.delta", "response.reasoning_summary_text.delta"})
_CALL_DELTAS = frozenset({"response.function_call_arguments.delta", "response.custom_tool_call_input.delta"})


def failure_code(error: AdapterError) -> str:
    """The ``response.error.code`` that makes Codex do the right thing
    (codex-rs reads it in ``classify_provider_error``): stop and tell the
    user on an overflowing context; wait and retry a full server; retry
    once more what looks transient; stop on a request the server refused."""
    if is_context_overflow(error):
        return "context_length_exceeded"
    if is_overloaded(error):
        return "rate_limit_exceeded"
    if isinstance(error, UpstreamReported):
        status = error.http_status
        if 400 <= status < 500 and status not in (408, 429):
            return "invalid_request_error"
    return "server_error"


class ResponsesRepairer(TypedStream):
    """One Responses stream. The adapter owns the numbering: every event it
    emits carries the number one above the one before, the first the
    upstream's first (0 when the adapter speaks first)."""

    END = "response.completed"

    def __init__(
        self,
        model: str,
        max_line_bytes: int,
        *,
        alias: str | None = None,
        collect_text: bool = False,
    ) -> None:
        super().__init__(collect_text)
        self.upstream_id: str | None = None  # the upstream's own id, when the adapter made the stream's
        self._model = model
        self._limit = max_line_bytes
        self._alias = alias
        self._id = ""
        self._own_id = False
        self._next: int | None = None  # the number the next emitted event carries
        self._created = False  # a response.created has gone out
        self._held: dict[str, Any] | None = None  # a terminal event waiting for its usage
        self._outputs: dict[str, int] = {}  # the output index of each item, where the upstream gave none
        self._parts: dict[str, int] = {}  # how many content parts each such item has

    @property
    def stream_id(self) -> str:
        return self._id

    @property
    def made_id(self) -> tuple[str, str] | None:
        """The adapter's id and the upstream's behind it, when the adapter made the stream's id."""
        return (self._id, self.upstream_id) if self._own_id and self.upstream_id else None

    # -- what the relay calls ------------------------------------------------

    def repair(self, event: Event) -> list[bytes]:
        body, kind = self._read(event)
        if kind in _DELTAS and "response" not in body:
            # The common event first: a delta whose number is the one due, whose
            # place is given and whose line fits goes out as it came.
            text, number = body.get("delta"), body.get("sequence_number")
            if type(text) is str and type(number) is int and number == self._next and "output_index" in body:
                payload = event.data.encode()
                if len(payload) + PREFIX <= self._limit:
                    if self.turns is not None:
                        self._keep(kind, body, text)
                    self._next = number + 1
                    return [typed_frame(kind, payload)]
        if kind == "response.failed":
            self.finished = True
            response = body.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            raise reported(error, body)
        changed = False
        if kind == "response.created":
            if self._created:  # the adapter spoke first: its own created stands
                self.upstream_id = _response_id(body)
                self.repairs["response_created_replaced"] += 1
                return []
            self._created = True
        response = body.get("response")
        if isinstance(response, dict):
            changed |= self._own_response(response)
        if "output_index" not in body:  # llama-server's: vLLM's and OpenAI's events carry it
            changed |= self._place(kind, body)
        if self.turns is not None:
            self._collect(kind, body)
        if kind in _TERMINAL:
            self.finished = True
            if not self._real_usage(response):
                self._held = body
                return []
            self.saw_usage = True
            if isinstance(response, dict):  # a real usage has one
                changed |= self._count("usage_total_filled", with_total(response["usage"], RESPONSES_NAMES))
                found = response["usage"]
                self.usage = {
                    "prompt_tokens": found["input_tokens"],
                    "completion_tokens": found["output_tokens"],
                }
        elif kind in _DELTAS:
            return self._delta(kind, body, event.data, changed)
        return self._emit(kind, body, event.data, changed)

    def finish(self, failed: bool = False, usage: Usage | None = None) -> list[bytes]:
        if failed:
            return []
        self.check_end()
        held, self._held = self._held, None
        if held is None:
            return []
        response = held["response"]
        if usage is not None:
            response["usage"] = _responses_usage(usage)
            self.repairs["usage_counted"] += 1
            self.usage = usage
        elif isinstance(response, dict) and isinstance(response.get("usage"), dict):
            response["usage"] = None  # a placeholder is no count: billing it would be further off
        return self._emit(str(held["type"]), held, "", True)

    def failure(self, error: AdapterError) -> bytes:
        """One ``response.failed``, after a ``response.created`` of the
        adapter's own when none has gone out yet."""
        start = self._start() if not self._created else []
        code = failure_code(error)
        message = error.message
        if code == "rate_limit_exceeded":
            message += f" Please try again in {_RETRY_IN}s."
        response = self._response("failed") | {"error": {"code": code, "message": message}}
        return b"".join(
            [
                *start,
                *self._emit("response.failed", {"type": "response.failed", "response": response}, own=True),
            ]
        )

    def error_body(self, error: AdapterError) -> bytes:
        return orjson.dumps(error.to_openai())

    def keepalive(self) -> bytes:
        """A typed heartbeat, as OpenAI's own API sends on a silent stream;
        before the upstream's first event, a ``response.created`` of the
        adapter's own goes first (the SDK's ``responses.stream()`` raises
        unless the first event is that)."""
        start = self._start() if not self._created else []
        return b"".join([*start, *self._emit("keepalive", {"type": "keepalive"}, own=True)])

    # -- the pieces ------------------------------------------------------------

    def _real_usage(self, response: object) -> bool:
        """The terminal event's usage is the server's count: not null, zeros or
        a placeholder (repair/usage.py); asked only of the terminal event."""
        usage = response.get("usage") if isinstance(response, dict) else None
        verdict = usage_verdict(usage, lambda: self._generated(response), RESPONSES_NAMES)
        self._count("usage_placeholder", verdict is Verdict.PLACEHOLDER)
        return verdict is Verdict.REAL

    def _generated(self, response: object) -> bool | None:
        """Whether the answer had text: its output items say; else the text kept, if any."""
        output = response.get("output") if isinstance(response, dict) else None
        if isinstance(output, list) and output:
            return any(_has_text(item) for item in output)
        return None if self.turns is None else self.turns.generated

    def _count(self, repair: str, applies: bool) -> bool:
        if applies:
            self.repairs[repair] += 1
        return applies

    def _start(self) -> list[bytes]:
        """The adapter's own ``response.created``: its id is the stream's from now on."""
        self._created = True
        if not self._id:
            self._id, self._own_id = "resp_" + uuid.uuid4().hex, True
        created = {"type": "response.created", "response": self._response("in_progress")}
        return self._emit("response.created", created, own=True)

    def _response(self, status: str) -> dict[str, Any]:
        if not self._id:
            self._id, self._own_id = "resp_" + uuid.uuid4().hex, True
        return {
            "id": self._id,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": self._alias or self._model,
            "output": [],
            "error": None,
            "incomplete_details": None,
            "usage": None,
        }

    def _own_response(self, response: dict[str, Any]) -> bool:
        """The stream's one id (and the alias's model name) on a response object."""
        changed = False
        upstream = response.get("id")
        if not self._id:
            self._id = upstream if isinstance(upstream, str) and upstream else "resp_" + uuid.uuid4().hex
            self._own_id = self._id != upstream
        if upstream != self._id:
            if self.upstream_id is None and isinstance(upstream, str):
                self.upstream_id = upstream
            response["id"] = self._id
            changed = True
        if self._alias is not None and response.get("model") != self._alias:
            response["model"] = self._alias
            self.repairs["model_renamed"] += 1
            changed = True
        return changed

    def _place(self, kind: str, body: dict[str, Any]) -> bool:
        """The output and content indexes llama-server leaves out, which the openai SDK's
        accumulator reads: counted from the items and parts as they are added."""
        item = body.get("item")
        item_id = item.get("id") if isinstance(item, dict) else body.get("item_id")
        if not isinstance(item_id, str):
            return False
        changed = False
        if "output_index" not in body:
            if item_id not in self._outputs:
                self._outputs[item_id] = len(self._outputs)
            body["output_index"] = self._outputs[item_id]
            changed = True
        if _PARTS.search(kind) and "content_index" not in body:
            parts = self._parts.get(item_id, 0)
            if kind == "response.content_part.added":
                self._parts[item_id] = parts = parts + 1
            body["content_index"] = max(parts - 1, 0)
            changed = True
        if changed:
            self.repairs["output_index_filled"] += 1
        return changed

    def _delta(self, kind: str, body: dict[str, Any], data: str, changed: bool) -> list[bytes]:
        text = body.get("delta")
        if not isinstance(text, str):
            return self._emit(kind, body, data, changed)
        if self.turns is not None:
            self._keep(kind, body, text)
        units = self._emit(kind, body, data, changed)
        if len(data) * 4 + PREFIX <= self._limit or len(units[0]) - _frame_overhead(kind) <= self._limit:
            return units
        assert self._next is not None
        self._next -= 1  # that frame does not go out: its pieces take its number on
        body["delta"] = ""
        room = self._limit - PREFIX - len(dumps({**body, "sequence_number": self._next})) - 12
        if room < 64:
            raise LineTooLong(f"a {kind} event cannot be split under --max-line-bytes ({self._limit})")
        self.repairs["long_line_split"] += 1
        return [
            unit
            for piece in pieces(text, room)
            for unit in self._emit(kind, {**body, "delta": piece}, own=True)
        ]

    def _collect(self, kind: str, body: dict[str, Any]) -> None:
        """A tool call's name, and how the answer ended, for its count (deltas: ``_delta``)."""
        assert self.turns is not None
        turn = self.turns.first
        item = body.get("item")
        name = item.get("name") if isinstance(item, dict) else None
        if kind == "response.output_item.added" and isinstance(item, dict) and isinstance(name, str):
            turn.call(item.get("id")).name.append(name)
        elif kind in _TERMINAL:
            incomplete = kind == "response.incomplete"
            turn.finish_reason = "length" if incomplete else "tool_calls" if turn.calls else "stop"

    def _keep(self, kind: str, body: dict[str, Any], text: str) -> None:
        """A delta's text, into what its chat turn is counted from."""
        assert self.turns is not None
        turn = self.turns.first
        if kind in _CALL_DELTAS:
            turn.call(body.get("item_id")).arguments.append(text)
        else:
            (turn.reasoning if kind in REASONING_DELTAS else turn.content).append(text)

    def _emit(
        self, kind: str, body: dict[str, Any], data: str = "", changed: bool = True, own: bool = False
    ) -> list[bytes]:
        """The event as a frame, numbered: as it came when its number is the one due.
        ``own``: an event the adapter made, whose number is no repair of the upstream's."""
        number = body.get("sequence_number")
        due = self._next
        if due is None:
            due = number if type(number) is int and number >= 0 else 0
        if number != due or type(number) is not int:
            body["sequence_number"] = due
            changed = True
            if self._next is not None and not own:
                self.repairs["sequence_renumbered"] += 1
        payload = dumps(body) if changed or not data else data.encode()
        if kind not in _DELTAS and len(payload) + PREFIX > self._limit and _WHOLE.search(kind) is None:
            raise LineTooLong(
                f"the upstream sent a {kind} event of {len(payload)} bytes, over --max-line-bytes "
                f"({self._limit}), and only deltas can be split"
            )
        self._next = due + 1  # only now: an event that does not go out takes no number
        return [typed_frame(kind, payload)]


def _frame_overhead(kind: str) -> int:
    """The bytes of a frame that are not its ``data: `` line."""
    return len(b"event: \n\n\n") + len(kind)


def _response_id(body: dict[str, Any]) -> str | None:
    response = body.get("response")
    found = response.get("id") if isinstance(response, dict) else None
    return found if isinstance(found, str) else None


def _has_text(item: object) -> bool:
    """An output item with something generated: text or reasoning parts, or call arguments."""
    if not isinstance(item, dict):
        return False
    if isinstance(item.get("arguments"), str) and item["arguments"]:
        return True
    parts = [*_listed(item.get("content")), *_listed(item.get("summary"))]
    return any(isinstance(part, dict) and part.get("text") for part in parts)


def _listed(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _responses_usage(usage: Usage) -> dict[str, Any]:
    """A counted usage in Responses' names, its cached and reasoning tokens carried."""
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    found: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": _detail(usage, "prompt_tokens_details", "cached_tokens")},
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _detail(usage, "completion_tokens_details", "reasoning_tokens")
        },
        "total_tokens": prompt + completion,
    }
    return found


def _detail(usage: Usage, details: str, name: str) -> int:
    found = usage.get(details)
    return (count_of(found.get(name)) if isinstance(found, dict) else None) or 0


class ResponseIds:
    """The upstream's id behind each response id the adapter made, for a
    later request's ``previous_response_id``; bounded, oldest forgotten first."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._ids: dict[str, str] = {}

    def add(self, ours: str, upstream: str) -> None:
        self._ids[ours] = upstream
        if len(self._ids) > self._size:
            del self._ids[next(iter(self._ids))]

    def upstream_of(self, ours: object) -> str | None:
        return self._ids.get(ours) if isinstance(ours, str) else None


def chat_request(fields: dict[str, Any]) -> dict[str, Any]:
    """The request as Chat Completions messages, for a tokenizer that counts
    only those: ``instructions`` as the system turn, each input item as a
    turn, function calls and their outputs as tool calls and tool turns."""
    messages: list[dict[str, Any]] = []
    if isinstance(fields.get("instructions"), str):
        messages.append({"role": "system", "content": fields["instructions"]})
    given = fields.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            messages.append(_turn(item))
    tools = [
        {
            "type": "function",
            "function": {key: tool[key] for key in ("name", "description", "parameters") if key in tool},
        }
        for tool in fields.get("tools") or ()
        if isinstance(tool, dict) and tool.get("type") == "function"
    ]
    return {"model": fields.get("model"), "messages": messages, **({"tools": tools} if tools else {})}


def _turn(item: dict[str, Any]) -> dict[str, Any]:
    kind = item.get("type")
    if kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function"}
        call["function"] = {"name": item.get("name"), "arguments": item.get("arguments")}
        return {"role": "assistant", "content": "", "tool_calls": [call]}
    if kind == "function_call_output":
        return {"role": "tool", "tool_call_id": item.get("call_id"), "content": _text(item.get("output"))}
    role = item.get("role")
    return {
        "role": "system" if role == "developer" else role or "user",
        "content": _text(item.get("content")),
    }


def _text(content: object) -> str:
    """The text of a content: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else ()
    return "".join(
        part["text"] for part in parts if isinstance(part, dict) and isinstance(part.get("text"), str)
    )
