"""Non-streaming responses (pure): normalised as chunks are, and assembled from a stream.

One-API's channel test passes only with HTTP 200, a non-null ``usage``,
non-empty ``choices`` and a string ``choices[0].message.content``
(shared/oneapi-relay.md), so a body always leaves with a usage object, and
with content ``""`` rather than null when there are no tool calls.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from sse_adapter.repair.chunks import REASONING, Kind, has_reasoning
from sse_adapter.repair.stream import map_finish_reason, reasoning_names, rename_reasoning
from sse_adapter.repair.think import ThinkSplitter, wrapped
from sse_adapter.repair.toolcalls import new_call_id, normalise_message_calls, split_tool_tags
from sse_adapter.repair.usage import Verdict, generated_text, timings_count, usage_verdict, with_total
from sse_adapter.settings import ReasoningField, Settings, Tags, ToolCallMode

__all__ = ["Assembler", "completion_object", "normalise_completion", "usage_of"]


def completion_object(kind: Kind) -> str:
    return "chat.completion" if kind is Kind.CHAT else "text_completion"


def normalise_completion(
    body: dict[str, Any],
    kind: Kind,
    settings: Settings,
    created: int,
    repairs: Counter[str] | None = None,
    alias: str | None = None,
    offers_tools: bool = True,
    think_opened: bool | None = None,
) -> dict[str, Any]:
    """The same repairs a stream gets, counted in ``repairs``, and a usage
    object whatever the server gave. ``alias``: the model name the client
    asked for, which the body carries back; ``offers_tools``: as for a
    stream, whether ``<tool_call>`` text may be a call; ``think_opened``: as
    for a stream, whether the prompt opened ``<think>``."""
    repairs = Counter() if repairs is None else repairs
    if alias is not None and body.get("model") != alias:
        body["model"] = alias
        repairs["model_renamed"] += 1
    if not body.get("id"):
        body["id"] = kind.id_prefix + uuid.uuid4().hex
    if settings.fill_fields:
        body.setdefault("object", completion_object(kind))
        if not isinstance(body.get("created"), int):
            body["created"] = created
    for choice in _list(body.get("choices")):
        if isinstance(choice, dict):
            _normalise_choice(choice, settings, repairs, offers_tools, think_opened)
    body["usage"] = usage_of(body, repairs)
    return body


def _normalise_choice(
    choice: dict[str, Any],
    settings: Settings,
    repairs: Counter[str],
    offers_tools: bool,
    think_opened: bool | None,
) -> None:
    if settings.fill_fields:
        choice.setdefault("finish_reason", None)
    map_finish_reason(choice, settings)
    message = choice.get("message")
    if not isinstance(message, dict):
        return
    rename_reasoning(message, settings)
    _split_think(message, settings, think_opened)
    if settings.tool_call_tags is Tags.SPLIT and offers_tools:
        _split_tool_tags(message, repairs)
    if settings.reasoning_field is ReasoningField.THINK_TAGS:
        _wrap_think(message, repairs)
    normalise = settings.tool_calls is ToolCallMode.NORMALISE
    if normalise and normalise_message_calls(message, repairs) and choice.get("finish_reason") == "stop":
        choice["finish_reason"] = "tool_calls"
        repairs["tool_call_finish_reason"] += 1
    if message.get("content") is None and not message.get("tool_calls"):
        message["content"] = ""


def _split_think(message: dict[str, Any], settings: Settings, opened: bool | None) -> None:
    content = message.get("content")
    if settings.think_tags is Tags.SPLIT and isinstance(content, str):
        # The whole answer is here: no hold, a </think> before any <think> ends
        # a thought the prompt opened wherever it comes.
        splitter = ThinkSplitter(opened, hold=None)
        if has_reasoning(message):
            splitter.settle()  # the server parses reasoning itself: its content is the answer
        thought, said = splitter.feed(content)
        held_thought, held_said = splitter.flush()
        if thought or held_thought:
            message["content"] = said + held_said
            for name in reasoning_names(settings):
                message[name] = (message.get(name) or "") + thought + held_thought


def _wrap_think(message: dict[str, Any], repairs: Counter[str]) -> None:
    content = message.get("content")
    thoughts = [message.get(name) for name in REASONING]
    thought = next((text for text in thoughts if isinstance(text, str) and text), "")
    if not thought or not (content is None or isinstance(content, str)):
        return  # parts, or no reasoning: left as they are
    for name in REASONING:
        message.pop(name, None)
    message["content"] = wrapped(thought, content or "")
    repairs["reasoning_in_think_tags"] += 1


def _split_tool_tags(message: dict[str, Any], repairs: Counter[str]) -> None:
    content = message.get("content")
    if not isinstance(content, str):
        return
    text, calls = split_tool_tags(content)
    if not calls:
        return
    upstream = message.get("tool_calls")
    found = [{"id": new_call_id(), "type": "function", "function": call} for call in calls]
    message["tool_calls"] = [*upstream, *found] if isinstance(upstream, list) else found
    message["content"] = text or None
    repairs["tool_call_tags_split"] += len(calls)


def usage_of(body: dict[str, Any], repairs: Counter[str] | None = None) -> dict[str, Any]:
    """The body's usage when it is the server's count (its total filled in
    if missing); else the server's own counts elsewhere (llama-server's
    ``timings``, TGI ``details``, Ollama, llama.cpp); else zeros, which
    One-API replaces by counting itself. A placeholder (zero completion
    tokens for an answer with text, say) is no count: One-API counting is
    nearer the truth than billing the placeholder."""
    repairs = Counter() if repairs is None else repairs
    usage = body.get("usage")
    verdict = usage_verdict(usage, lambda: generated_text(body))
    if verdict is Verdict.REAL and isinstance(usage, dict):
        if with_total(usage):
            repairs["usage_total_filled"] += 1
        return usage
    if verdict is Verdict.PLACEHOLDER:
        repairs["usage_placeholder"] += 1
    timed = timings_count(body.get("timings"), lambda: generated_text(body))
    if timed is not None:
        repairs["usage_from_timings"] += 1
        return timed
    details = body.get("details")
    if not isinstance(details, dict):
        details = {}
    prefill = details.get("prefill")
    prompt = _count(body.get("prompt_eval_count"), body.get("tokens_evaluated"))
    prompt = prompt or (len(prefill) if isinstance(prefill, list) else 0)
    completion = _count(details.get("generated_tokens"), body.get("eval_count"), body.get("tokens_predicted"))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _count(*candidates: object) -> int:
    return next((value for value in candidates if isinstance(value, int) and value >= 0), 0)


class Assembler:
    """Builds the non-stream response from the repaired chunks of a stream,
    as the server would have answered it: text joined, tool calls merged by
    index with their arguments in order, the last finish reason, the usage.

    Text comes in thousands of small pieces: each is kept in a list and
    joined once at the end, since a string grown piece by piece is copied
    whole each time (n squared).
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._texts: dict[int, dict[str, list[str]]] = {}  # by choice: each text field's pieces
        self._tools: dict[int, dict[int, _CallPieces]] = {}
        self._usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk and key not in self._head:
                self._head[key] = chunk[key]
        if usage_verdict(chunk.get("usage")) is Verdict.REAL:
            self._usage = chunk["usage"]
        for choice in _list(chunk.get("choices")):
            if isinstance(choice, dict):
                self._add_choice(choice)

    def add_all(self, payloads: list[bytes]) -> None:
        """Repaired payloads, as the relay would send them."""
        for payload in payloads:
            self.add(orjson.loads(payload))

    def result(self) -> dict[str, Any]:
        choices = [self._finished(index) for index in sorted(self._choices)]
        body = {"id": "", **self._head, "object": completion_object(self.kind), "choices": choices}
        # Zero completion tokens for an answer with text: a placeholder (read whole only now)
        body["usage"] = usage_of({**body, "usage": self._usage})
        return body

    def _add_choice(self, choice: dict[str, Any]) -> None:
        # Every value is checked before it is used: what is not of the shape
        # OpenAI gives it is left out of the answer, never a crash.
        index = _position(choice.get("index"), 0)
        into = self._choices.setdefault(index, self._empty_choice(index))
        texts = self._texts.setdefault(index, {})
        if choice.get("finish_reason") is not None:
            into["finish_reason"] = choice["finish_reason"]
        _merge_logprobs(into, choice.get("logprobs"))
        if self.kind is Kind.COMPLETION:
            texts.setdefault("text", []).append(_text(choice.get("text")))
            return
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("role"), str) and delta["role"]:
            into["message"]["role"] = delta["role"]
        for key in ("content", *REASONING):
            if text := _text(delta.get(key)):
                texts.setdefault(key, []).append(text)
        for call in _list(delta.get("tool_calls")):
            if isinstance(call, dict):
                self._add_tool_call(index, call)

    def _empty_choice(self, index: int) -> dict[str, Any]:
        if self.kind is Kind.COMPLETION:
            return {"index": index, "text": "", "logprobs": None, "finish_reason": None}
        return {
            "index": index,
            "message": {"role": "assistant", "content": None},
            "logprobs": None,
            "finish_reason": None,
        }

    def _add_tool_call(self, choice_index: int, call: dict[str, Any]) -> None:
        calls = self._tools.setdefault(choice_index, {})
        into = calls.setdefault(_position(call.get("index"), len(calls)), _CallPieces())
        if isinstance(call.get("id"), str) and call["id"]:
            into.id = call["id"]
        if isinstance(call.get("type"), str) and call["type"]:
            into.type = call["type"]
        function = call.get("function")
        if isinstance(function, dict):
            into.name.append(_text(function.get("name")))
            into.arguments.append(_text(function.get("arguments")))

    def _finished(self, index: int) -> dict[str, Any]:
        choice = self._choices[index]
        texts = {key: "".join(pieces) for key, pieces in self._texts[index].items()}
        if self.kind is Kind.COMPLETION:
            choice["text"] = texts.get("text", "")
            return choice
        message = choice["message"]
        message.update((key, text) for key, text in texts.items() if text)
        if index in self._tools:
            calls = self._tools[index]
            message["tool_calls"] = [calls[n].whole() for n in sorted(calls)]
        elif message["content"] is None:
            message["content"] = ""
        return choice


@dataclass(slots=True)
class _CallPieces:
    """One tool call of an assembled answer: its name and arguments as the pieces that came."""

    id: str | None = None
    type: str = "function"
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    def whole(self) -> dict[str, Any]:
        function = {"name": "".join(self.name), "arguments": "".join(self.arguments)}
        return {"id": self.id, "type": self.type, "function": function}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str:
    """A text field's text: a string, or the text parts of a content list."""
    if isinstance(value, str):
        return value
    parts = [part.get("text") for part in _list(value) if isinstance(part, dict)]
    return "".join(part for part in parts if isinstance(part, str))


def _position(value: object, otherwise: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else otherwise


def _merge_logprobs(into: dict[str, Any], logprobs: object) -> None:
    """Chat logprobs are lists under ``content``; completion logprobs are parallel lists."""
    if not isinstance(logprobs, dict):
        return
    merged = into["logprobs"] = into["logprobs"] or {}
    for key, values in logprobs.items():
        if isinstance(values, list):
            merged.setdefault(key, []).extend(values)  # in place: a list rebuilt per chunk is n squared
