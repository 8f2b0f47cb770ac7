"""Anthropic Messages streams (``/v1/messages``), repaired (pure).

What a Messages client needs (shared/formats.md): ``message_start`` first,
``event: ping`` wherever a silence would be (Claude Code's watchdog counts
bytes, and on a silence it sends the whole request again, non-streaming: a
second generation on a one-slot server), usage in ``message_start`` and the
last ``message_delta``, and an end that says how it ended: ``message_stop``,
or one ``event: error`` for every failure, which the SDK raises.

An event that needs nothing goes out as it came, behind an ``event:`` line
named for its type.
"""

from __future__ import annotations

from typing import Any

import orjson

from sse_adapter.errors import (
    AdapterError,
    LineTooLong,
    UpstreamReported,
    UpstreamTimeout,
)
from sse_adapter.repair.dialects import is_overloaded
from sse_adapter.repair.fitting import pieces
from sse_adapter.repair.format import Usage
from sse_adapter.repair.typed import (
    PREFIX,
    TypedStream,
    dumps,
    typed_frame,
)
from sse_adapter.repair.usage import count_of
from sse_adapter.sse.decoder import Event

__all__ = ["PING", "MessagesRepairer", "stream_error_type"]

PING = b'event: ping\ndata: {"type":"ping"}\n\n'

# The text of each content-block delta, by the delta's type: what may be split.
_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
# How a message ended, as the chat finish_reason it is counted as (repair/turns.py).
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def stream_error_type(error: AdapterError) -> str:
    """The ``error.type`` of an in-band error: the server's own when it gave
    an Anthropic one; a full server is ``overloaded_error``, the adapter's
    own clocks ``timeout_error``, anything else ``api_error``."""
    if isinstance(error, UpstreamReported) and error.upstream_type == error.anthropic_type:
        return error.anthropic_type
    if is_overloaded(error):
        return "overloaded_error"
    if isinstance(error, UpstreamTimeout):
        return "timeout_error"
    return "api_error"


class MessagesRepairer(TypedStream):
    """One Messages stream: checked for its end, its usage and its line lengths."""

    END = "message_stop"

    def __init__(self, max_line_bytes: int, *, alias: str | None = None, collect_text: bool = False) -> None:
        super().__init__(collect_text)
        self._limit = max_line_bytes
        self._alias = alias
        self._id = ""
        self._held: list[dict[str, Any]] = []  # message_delta and message_stop, waiting for usage
        self._input_tokens = 0  # the prompt's tokens, those read from the server's cache too
        self._output_real = False  # the last message_delta's output_tokens is the server's count
        self._started = False  # a message_start came, with its input count

    @property
    def stream_id(self) -> str:
        return self._id

    def repair(self, event: Event) -> list[bytes]:
        body, kind = self._read(event)
        if kind == "content_block_delta":
            # The common event first: a text delta whose line fits goes out as it came.
            delta = body.get("delta")
            if type(delta) is dict and delta.get("type") == "text_delta":
                text = delta.get("text")
                payload = event.data.encode()
                if type(text) is str and len(payload) + PREFIX <= self._limit:
                    if self.turns is not None:
                        self.turns.first.content.append(text)
                    return [typed_frame(kind, payload)]
        changed = False
        if self.turns is not None and kind in ("content_block_start", "message_delta"):
            self._collect(body)
        if kind == "message_start":
            changed = self._start(body)
        elif kind == "content_block_delta":
            return self._delta(body, event.data)
        elif kind == "message_delta":
            if not self._real_usage(body.get("usage")):
                self._held.append(body)  # its usage is counted once the stream is over
                return []
            self.saw_usage = True
            self.usage = {
                "prompt_tokens": self._input_tokens,
                "completion_tokens": body["usage"]["output_tokens"],
            }
        elif kind == "message_stop":
            self.finished = True
            if self._held:
                self._held.append(body)
                return []
        return self._emit(kind, body, event.data, changed)

    def finish(self, failed: bool = False, usage: Usage | None = None) -> list[bytes]:
        if failed:
            return []
        self.check_end()
        held, self._held = self._held, []
        units: list[bytes] = []
        for body in held:
            if body.get("type") == "message_delta" and usage is not None:
                counted = body.setdefault("usage", {})
                if isinstance(counted, dict):
                    if not self._output_real:
                        counted["output_tokens"] = usage.get("completion_tokens", 0)
                    if not self._input_tokens:
                        counted["input_tokens"] = usage.get("prompt_tokens", 0)
                    self.repairs["usage_counted"] += 1
                    prompt = self._input_tokens or counted["input_tokens"]
                    self.usage = {"prompt_tokens": prompt, "completion_tokens": counted["output_tokens"]}
            units += self._emit(str(body.get("type")), body)
        return units

    def failure(self, error: AdapterError) -> bytes:
        body = {"type": "error", "error": {"type": stream_error_type(error), "message": error.message}}
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"

    def error_body(self, error: AdapterError) -> bytes:
        return orjson.dumps(error.to_anthropic())

    def _start(self, body: dict[str, Any]) -> bool:
        message = body.get("message")
        if not isinstance(message, dict):
            return False
        if isinstance(message.get("id"), str):
            self._id = message["id"]
        self._input_tokens = _prompt_tokens(message.get("usage"))
        self._started = True
        changed = False
        if not isinstance(message.get("usage"), dict):
            # The anthropic SDK reads it and raises without one: zeros here, the
            # last message_delta carries the count (the server's, or counted).
            message["usage"] = {"input_tokens": 0, "output_tokens": 0}
            self.repairs["start_usage_filled"] += 1
            changed = True
        if self._alias is not None and message.get("model") != self._alias:
            message["model"] = self._alias
            self.repairs["model_renamed"] += 1
            changed = True
        return changed

    def _real_usage(self, usage: object) -> bool:
        """A ``message_delta``'s usage, with ``message_start``'s input, is the
        server's count: input tokens (cache reads count: Anthropic's
        ``input_tokens`` leaves them out), and output tokens, zero only for an
        answer known to have no text. Zero prompt tokens, or zero output
        tokens for an answer with text, is a placeholder (repair/usage.py)."""
        if not isinstance(usage, dict):
            return False
        self._input_tokens = self._input_tokens or _prompt_tokens(usage)
        output = count_of(usage.get("output_tokens"))
        generated = None if self.turns is None else self.turns.generated
        # Not known to be empty: zero output tokens is missing, as it always was here.
        self._output_real = output is not None and (output > 0 or (output == 0 and generated is False))
        if (output is not None and self._started and not self._input_tokens) or (output == 0 and generated):
            self.repairs["usage_placeholder"] += 1
        return self._output_real and self._input_tokens > 0

    def _delta(self, body: dict[str, Any], data: str) -> list[bytes]:
        """A content-block delta: as it came when its line fits (nothing in it
        changes: byte for byte), else its text split over several."""
        delta = body.get("delta")
        kind = delta.get("type") if type(delta) is dict else None
        name = _DELTA_TEXT.get(kind) if type(kind) is str else None
        text = delta.get(name) if name is not None else None  # type: ignore[union-attr]
        if type(text) is not str or name is None or type(delta) is not dict:
            return self._emit("content_block_delta", body, data, False)
        if self.turns is not None:
            turn = self.turns.first
            if name == "partial_json":
                turn.call(body.get("index")).arguments.append(text)
            else:
                (turn.reasoning if name == "thinking" else turn.content).append(text)
        payload = data.encode()
        if len(payload) + PREFIX <= self._limit:
            return [typed_frame("content_block_delta", payload)]
        delta[name] = ""
        room = self._limit - PREFIX - len(orjson.dumps(body)) - 8
        if room < 64:
            raise LineTooLong(f"a content_block_delta cannot be split under --max-line-bytes ({self._limit})")
        self.repairs["long_line_split"] += 1
        return [
            unit
            for piece in pieces(text, room)
            for unit in self._emit("content_block_delta", {**body, "delta": {**delta, name: piece}})
        ]

    def _collect(self, body: dict[str, Any]) -> None:
        """A tool use's name, and how the message ended, for its count (deltas: ``_delta``)."""
        assert self.turns is not None
        turn = self.turns.first
        block, delta = body.get("content_block"), body.get("delta")
        if isinstance(block, dict) and block.get("type") == "tool_use" and isinstance(block.get("name"), str):
            turn.call(body.get("index")).name.append(block["name"])
        elif isinstance(delta, dict) and isinstance(reason := delta.get("stop_reason"), str):
            turn.finish_reason = _FINISH.get(reason, "stop")
            sequence = delta.get("stop_sequence")
            turn.stop_reason = sequence if isinstance(sequence, str) else None

    def _emit(self, kind: str, body: dict[str, Any], data: str = "", changed: bool = True) -> list[bytes]:
        payload = dumps(body) if changed or not data else data.encode()
        if PREFIX + len(payload) > self._limit:
            raise LineTooLong(
                f"the upstream sent a {kind} event of {len(payload)} bytes, over --max-line-bytes "
                f"({self._limit}), and only text, thinking and tool-input deltas can be split"
            )
        return [typed_frame(kind, payload)]


def _prompt_tokens(usage: object) -> int:
    """A usage's prompt tokens: Anthropic counts the cache's apart from ``input_tokens``."""
    if not isinstance(usage, dict):
        return 0
    names = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    return sum(count_of(usage.get(name)) or 0 for name in names)


def chat_request(fields: dict[str, Any]) -> dict[str, Any]:
    """The request as Chat Completions messages, for a tokenizer that counts
    only those: ``system`` as the system turn, text blocks as text, tool uses
    as tool calls, tool results as tool turns."""
    messages: list[dict[str, Any]] = []
    if (system := _text(fields.get("system"))) is not None:
        messages.append({"role": "system", "content": system})
    for message in fields.get("messages") or ():
        if isinstance(message, dict):
            messages += _turns(message)
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool.get("name"),
                "description": tool.get("description", ""),
                "parameters": tool.get("input_schema", {}),
            },
        }
        for tool in fields.get("tools") or ()
        if isinstance(tool, dict)
    ]
    return {"model": fields.get("model"), "messages": messages, **({"tools": tools} if tools else {})}


def _turns(message: dict[str, Any]) -> list[dict[str, Any]]:
    role, content = message.get("role"), message.get("content")
    blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
    turn: dict[str, Any] = {"role": role, "content": _text(blocks) or ""}
    calls = [
        {
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": orjson.dumps(block.get("input")).decode()},
        }
        for block in blocks
        if isinstance(block, dict) and block.get("type") == "tool_use"
    ]
    if calls:
        turn["tool_calls"] = calls
    results = [
        {
            "role": "tool",
            "tool_call_id": block.get("tool_use_id"),
            "content": _text(block.get("content")) or "",
        }
        for block in blocks
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    return [*results, turn] if turn["content"] or calls or not results else results


def _text(content: object) -> str | None:
    """The text of a content: a string, or the text of its text blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    return "".join(
        block["text"] for block in content if isinstance(block, dict) and isinstance(block.get("text"), str)
    )
