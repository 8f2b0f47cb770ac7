"""Turns one upstream stream's events into the payloads to send (pure).

Each event is checked for an error in any server's shape, then its chunk is
normalised to what One-API forwards and OpenAI clients parse, then fitted
under One-API's line limit. Every repair is counted by kind.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import orjson

from sse_adapter.errors import AdapterError, UpstreamError
from sse_adapter.repair.chunks import REASONING, StreamIdentity, error_chunk, has_reasoning
from sse_adapter.repair.dialects import (
    OPENAI_FINISH_REASONS,
    STOP_ALIASES,
    chunk_error,
    event_error,
)
from sse_adapter.repair.fitting import fit
from sse_adapter.repair.think import ThinkSplitter, ThinkWrapper
from sse_adapter.repair.toolcalls import ToolCalls, ToolTagSplitter
from sse_adapter.repair.turns import Turns
from sse_adapter.repair.usage import Verdict, generated_text, timings_count, usage_verdict, with_total
from sse_adapter.settings import ReasoningField, Settings, Tags, ToolCallMode
from sse_adapter.sse.decoder import Event
from sse_adapter.sse.encoder import DONE, frame, frames

__all__ = ["StreamRepairer", "map_finish_reason", "reasoning_name", "reasoning_names", "rename_reasoning"]

log = logging.getLogger(__name__)

_EXCERPT = 200
_MISSING = object()


class StreamRepairer:
    """One per stream. ``finished`` turns true at the upstream's ``[DONE]``:
    the relay stops reading there and writes the stream's one ``[DONE]``.

    ``usage_on_last_choice``: the client did not ask for usage (the adapter
    did), so the usage rides on the last chunk that has choices, held back
    until the usage comes or the stream ends, instead of a chunk of its own.
    ``alias``: the model name the client asked for, which every chunk
    carries back. ``collect_text``: keep what each choice generated
    (:class:`~sse_adapter.repair.turns.Turns`), for counting its tokens
    when the upstream sends no usage. ``offers_tools``: the
    request let the model call tools (:func:`offers_tools`); without,
    ``<tool_call>`` text stays text. ``think_opened``: whether the request
    had the chat template open ``<think>`` in the prompt
    (:func:`~sse_adapter.repair.think.prompt_opens_think`), for
    ``--think-tags split``. ``hide_usage``: the client said
    ``include_usage: false`` and keeps its choice (``--stream-usage
    ask-keep-client``): the usage is read, never sent. ``usage_asked``: the
    upstream was asked for usage (by the adapter or the client); without,
    llama-server's ``timings`` are not made a usage the client did not ask for.

    A usage that is not the server's count (null, zeros, a placeholder:
    :mod:`~sse_adapter.repair.usage`) is none: ``saw_usage`` stays false and
    the relay counts one. ``usage`` is the one the stream ended with.
    """

    # Slots, not a __dict__: past 30 attributes CPython 3.11 stops sharing an
    # instance dict's keys, and every attribute read on the per-event path slows.
    __slots__ = (
        "_adopted",
        "_alias",
        "_both_reasoning",
        "_dones",
        "_events",
        "_fill_fields",
        "_finishing",
        "_hide",
        "_holds_usage",
        "_last_choice",
        "_last_sent",
        "_map_reasons",
        "_normalise_tools",
        "_other_reasoning",
        "_reasoning_names",
        "_ride",
        "_split_thinking",
        "_split_tool_tags",
        "_think_opened",
        "_thinking",
        "_timings",
        "_tool_tags",
        "_tools",
        "_unknown_reasons",
        "_usage_chunk",
        "_wrap_thinking",
        "_wrappers",
        "finished",
        "identity",
        "repairs",
        "saw_usage",
        "settings",
        "turns",
        "usage",
    )

    def __init__(
        self,
        identity: StreamIdentity,
        settings: Settings,
        *,
        usage_on_last_choice: bool = False,
        alias: str | None = None,
        collect_text: bool = False,
        offers_tools: bool = True,
        think_opened: bool | None = None,
        hide_usage: bool = False,
        usage_asked: bool = True,
    ) -> None:
        self.identity = identity
        self.settings = settings
        self.finished = False
        self.repairs: Counter[str] = Counter()
        self.saw_usage = False
        self.usage: dict[str, Any] | None = None
        self.turns: Turns | None = Turns() if collect_text else None
        self._ride = usage_on_last_choice and not hide_usage
        self._hide = hide_usage
        self._holds_usage = settings.final_usage_only or usage_on_last_choice or hide_usage
        self._timings = usage_asked
        self._alias = alias
        self._last_choice: dict[str, Any] | None = None  # held for the usage to ride on
        self._last_sent: str | None = None  # the upstream's payload of the chunk held
        self._finishing = False  # the chunk under repair finishes a choice
        self._usage_chunk: dict[str, Any] | None = None
        self._dones = 0  # [DONE] events: the one that ends the stream, and any after it
        self._events = 0
        self._thinking: dict[object, ThinkSplitter] = {}
        self._tool_tags: dict[object, ToolTagSplitter] = {}
        self._tools: dict[object, ToolCalls] = {}  # by choice index
        self._wrappers: dict[object, ThinkWrapper] = {}
        # The settings the per-event path asks about, looked up once.
        self._fill_fields = settings.fill_fields
        self._map_reasons = settings.map_finish_reason
        self._split_thinking = settings.think_tags is Tags.SPLIT
        self._think_opened = think_opened
        self._split_tool_tags = settings.tool_call_tags is Tags.SPLIT and offers_tools
        self._normalise_tools = settings.tool_calls is ToolCallMode.NORMALISE
        self._other_reasoning = _other_reasoning_name(settings)
        self._both_reasoning = settings.reasoning_field is ReasoningField.BOTH
        self._reasoning_names = reasoning_names(settings)
        self._wrap_thinking = settings.reasoning_field is ReasoningField.THINK_TAGS
        self._unknown_reasons: set[str] = set()  # logged once a stream
        self._adopted = False

    def repair(self, event: Event) -> list[bytes]:
        """The payloads one event becomes. Each check is a dict lookup, and a
        repair runs only where one is due: most chunks need none and go out
        byte for byte."""
        self._events += 1
        data = event.data
        if event.event == "error":
            self.repairs["error_shape"] += 1
            raise event_error(data)
        if not data.startswith("{") and data.strip() == "[DONE]":
            self.finished = True
            self._dones += 1
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if type(chunk) is not dict:
            raise _not_an_object(data)
        if ("error" in chunk or "error_code" in chunk) and (error := chunk_error(chunk)) is not None:
            self.repairs["error_shape"] += 1
            raise error
        changed = "\n" in data and self._count("multi_line_payload", True)
        held_usage = "usage" in chunk and self._hold_usage(chunk)
        choices = chunk.get("choices")
        if not choices and "usage" not in chunk:
            if held_usage:
                return []  # nothing left but the usage, which goes out at the end
            if self.settings.drop_non_chunks:  # LocalAI MCP events, llama.cpp prompt_progress
                self.repairs["non_chunk_dropped"] += 1
                return []
            return self._send(chunk, data, changed=changed)  # not a chunk: not ours to repair
        changed |= held_usage
        if self._alias is not None and chunk.get("model") != self._alias:
            chunk["model"] = self._alias
            changed = self._count("model_renamed", True)
        if not self._adopted:
            self._adopt(chunk)
        if choices is not None and not isinstance(choices, list):
            return self._send(chunk, data, changed)  # a shape no client reads: sent on as it came
        identity = self.identity
        if not identity.id or chunk.get("id") != identity.id:
            changed |= self._unify_id(chunk)
        if self._fill_fields and ("object" not in chunk or not isinstance(chunk.get("created"), int)):
            changed |= self._fill(chunk)
        for choice in choices or ():
            if isinstance(choice, dict):
                changed |= self._repair_choice(choice)
        if self._finishing:
            self._finishing = False
            if self._timings and "timings" in chunk and not self.saw_usage:
                self._hold_timings(chunk)
            if self._ride:
                return self._hold_last_choice(chunk, data)
        if not changed:  # the common case, inline: _send's first branch
            raw = data.encode()
            if len(raw) + 6 <= self.settings.max_line_bytes:
                return [raw]
        return self._send(chunk, data, changed)

    @property
    def stream_id(self) -> str:
        return self.identity.id

    @staticmethod
    def encode(payloads: list[bytes]) -> bytes:
        return frames(payloads)

    @staticmethod
    def closing() -> bytes:
        return DONE

    def failure(self, error: AdapterError) -> bytes:
        return frame(error_chunk(self.identity, error)) + DONE

    @staticmethod
    def error_body(error: AdapterError) -> bytes:
        return orjson.dumps(error.to_openai())

    def check_end(self) -> None:
        """A stream whose every event was dropped is no answer but a wrong
        endpoint (TGI's native /generate_stream, say): an error. One without
        ``[DONE]`` is an answer all the same."""
        if not self.finished and not self._events:
            raise UpstreamError(
                "the upstream's answer held no SSE events; check that --upstream is the server's "
                "OpenAI-compatible endpoint"
            )
        # Every event is [DONE], a chunk (sent, or held for the end) or a dropped non-chunk:
        # counted so, the per-event path keeps no count of its own.
        chunks = self._events - self._dones - self.repairs["non_chunk_dropped"]
        if not chunks and self.repairs["non_chunk_dropped"]:
            raise UpstreamError(
                f"the upstream's stream held no OpenAI chunks ({self.repairs['non_chunk_dropped']} events of "
                "another shape); check that --upstream is the server's OpenAI-compatible endpoint"
            )

    def finish(self, failed: bool = False, usage: dict[str, Any] | None = None) -> list[bytes]:
        """The payloads that end the stream: text held back, then the usage
        (the upstream's, else ``usage`` as counted for it).

        After a failure the usage is left out: the error is the last word.
        """
        if not failed:
            self.check_end()
        if not failed and not self.finished:
            self.repairs["missing_done"] += 1
        held = dict.fromkeys([*self._thinking, *self._tool_tags, *self._wrappers])
        payloads = [payload for index in held for payload in self._flush_held(index)]
        if failed:
            usage = None
        elif self._usage_chunk is not None:
            usage = self._usage_chunk["usage"]
        elif usage is not None:
            self.repairs["usage_counted"] += 1
        self.usage = usage
        if self._hide:
            return payloads
        if self._ride:
            return payloads + self._last_with_usage(usage)
        if usage is not None:
            chunk = self._usage_chunk or {**self.identity.chunk(), "choices": []}
            payloads += fit({**chunk, "usage": usage}, self.settings.max_line_bytes, self.repairs)
        return payloads

    def _hold_last_choice(self, chunk: dict[str, Any], data: str) -> list[bytes]:
        """Hold a chunk that finishes a choice (it may be the last with choices);
        the one held before goes out now."""
        released = self._release_last_choice()
        self._last_choice, self._last_sent = chunk, data
        return released

    def _release_last_choice(self) -> list[bytes]:
        held, self._last_choice = self._last_choice, None
        return [] if held is None else fit(held, self.settings.max_line_bytes, self.repairs, self._last_sent)

    def _last_with_usage(self, usage: dict[str, Any] | None) -> list[bytes]:
        if usage is None:
            return self._release_last_choice()
        if self._last_choice is None:
            self._last_choice, self._last_sent = self.identity.chunk(), None
        chunk = self._last_choice
        for name, value in (self._usage_chunk or {}).items():
            chunk.setdefault(name, value)  # the usage chunk's other fields ride along
        chunk["usage"] = usage
        self.repairs["usage_on_last_chunk"] += 1
        return self._release_last_choice()

    def _send(self, chunk: dict[str, Any], data: str, changed: bool) -> list[bytes]:
        if not changed:
            raw = data.encode()
            if len(raw) + 6 <= self.settings.max_line_bytes:
                return [raw]  # as the upstream sent it, byte for byte
        return fit(chunk, self.settings.max_line_bytes, self.repairs, data)

    def _count(self, repair: str, applies: bool) -> bool:
        if applies:
            self.repairs[repair] += 1
        return applies

    def _hold_usage(self, chunk: dict[str, Any]) -> bool:
        """Keep the last real usage for the end: it must be the last chunk
        before ``[DONE]``, and servers repeat null or zero usage on every chunk.
        Only chunks that carry ``usage`` come here, never an ordinary delta."""
        usage = chunk["usage"]
        verdict = usage_verdict(usage, lambda: self._generated(chunk))
        if verdict is Verdict.PLACEHOLDER:
            self.repairs["usage_placeholder"] += 1
        real = verdict is Verdict.REAL
        self.saw_usage |= real
        if not self._holds_usage:
            return False
        chunk.pop("usage")
        if real:
            if with_total(usage):
                self.repairs["usage_total_filled"] += 1
            self._keep_usage(chunk, usage)
        elif self._timings and "timings" in chunk:
            self._hold_timings(chunk)
        elif verdict is Verdict.EMPTY:
            self.repairs["empty_usage_dropped"] += 1
        return True

    def _hold_timings(self, chunk: dict[str, Any]) -> None:
        """llama-server's own count, from its ``timings``, when it sent no usage."""
        usage = timings_count(chunk["timings"], lambda: self._generated(chunk))
        if usage is None:
            return
        self.saw_usage = True
        self.repairs["usage_from_timings"] += 1
        self._keep_usage(chunk, usage)

    def _keep_usage(self, chunk: dict[str, Any], usage: dict[str, Any]) -> None:
        # A usage-only chunk is not sent on: what else the server put in it
        # (llama-server's timings, system_fingerprint) goes out with the usage.
        self._usage_chunk = {
            **({} if chunk.get("choices") else chunk),
            "id": self.identity.claim(chunk.get("id")),
            "object": chunk.get("object") or self.identity.kind.value,
            "created": chunk.get("created") or self.identity.created,
            "model": self._alias or chunk.get("model") or self.identity.model,
            "choices": [],
            "usage": usage,
        }
        self.repairs["usage_moved_last"] += 1

    def _generated(self, chunk: dict[str, Any]) -> bool | None:
        """Whether the answer so far, this chunk too, has text; None: not known
        (no text is kept once the route's streams carry usage)."""
        if generated_text(chunk):
            return True
        return None if self.turns is None else self.turns.generated

    def _adopt(self, chunk: dict[str, Any]) -> None:
        """The upstream's first chunk names the model and the time that the
        adapter's own chunks (heartbeats, errors) then carry too."""
        self._adopted = True
        model, created = chunk.get("model"), chunk.get("created")
        if isinstance(model, str) and model:
            self.identity.model = model
        if isinstance(created, int) and not isinstance(created, bool):
            self.identity.created = created

    def _unify_id(self, chunk: dict[str, Any]) -> bool:
        upstream_id = chunk.get("id")
        chunk["id"] = self.identity.claim(upstream_id)
        return self._count("id_unified", chunk["id"] != upstream_id)

    def _fill(self, chunk: dict[str, Any]) -> bool:
        changed = False
        if "object" not in chunk:
            chunk["object"] = self.identity.kind.value
            changed = self._count("object_filled", True)
        if not isinstance(chunk.get("created"), int):
            chunk["created"] = self.identity.created
            changed = self._count("created_filled", True)
        return changed

    def _repair_choice(self, choice: dict[str, Any]) -> bool:
        changed = False
        delta = choice.get("delta")
        turns = self.turns
        if turns is not None:
            if type(delta) is dict and len(delta) == 1 and type(text := delta.get("content")) is str:
                if choice.get("index", 0) == 0:
                    turns.first.content.append(text)  # the common delta, inline
                else:
                    turns.of(choice["index"]).content.append(text)
            else:
                turns.add_chat(choice)
        finish = choice.get("finish_reason", _MISSING)
        if finish is _MISSING:
            if self._fill_fields:  # vLLM may leave it out
                choice["finish_reason"] = None
                changed = self._count("finish_reason_filled", True)
        elif finish is not None:
            self._finishing = True
            if type(finish) is str and self._map_reasons:
                changed = self._map_finish_reason(choice)
            if turns is not None:
                turns.end(choice)  # after the mapping: TGI's eos_token is a stop
        if type(delta) is dict:
            if (self._other_reasoning is not None and self._other_reasoning in delta) or (
                self._both_reasoning and "reasoning_content" in delta  # the other name, for both
            ):
                changed |= self._rename_reasoning(delta)
            if self._split_thinking:
                changed |= self._split_think(choice, delta)
            if self._normalise_tools and "tool_calls" in delta:
                changed |= self._normalise_tool_calls(choice, delta)
            if self._split_tool_tags:
                changed |= self._split_tags(choice, delta)
            if self._wrap_thinking:
                changed |= self._wrap_think(choice, delta)
        if self._tools and self._normalise_tools and choice.get("finish_reason") == "stop":
            changed |= self._finish_with_tool_calls(choice)
        return changed

    def _wrap_think(self, choice: dict[str, Any], delta: dict[str, Any]) -> bool:
        """Reasoning into content, inside ``<think>...</think>``."""
        placed = _text_at(choice, delta)
        if placed is None:
            return False  # left where it is: content it cannot go into
        index, content = placed
        reasoning = delta.pop("reasoning_content", None)
        other = delta.pop("reasoning", None)
        reasoning = reasoning if isinstance(reasoning, str) else other if isinstance(other, str) else ""
        wrapper = self._wrappers.get(index)
        if wrapper is None:
            if not reasoning:
                return False
            wrapper = self._wrappers[index] = ThinkWrapper()
        text = wrapper.wrap(reasoning, content or "")
        if choice.get("finish_reason") is not None:
            text += wrapper.close()
        if text == (content or ""):
            return False
        delta["content"] = text
        return self._count("reasoning_in_think_tags", True)

    def _map_finish_reason(self, choice: dict[str, Any]) -> bool:
        mapped = map_finish_reason(choice, self.settings, self._unknown_reasons)
        return self._count("finish_reason_mapped", mapped)

    def _rename_reasoning(self, delta: dict[str, Any]) -> bool:
        return self._count("reasoning_renamed", rename_reasoning(delta, self.settings))

    def _split_think(self, choice: dict[str, Any], delta: dict[str, Any]) -> bool:
        placed = _text_at(choice, delta)
        if placed is None:
            return False  # parts: not ours to split
        index, content = placed
        finish = choice.get("finish_reason")
        splitter = self._thinking.get(index)
        if splitter is None:
            splitter = self._thinking[index] = ThinkSplitter(self._think_opened)
        if ("reasoning_content" in delta or "reasoning" in delta) and has_reasoning(delta):
            splitter.settle()  # the server parses reasoning itself: its content is the answer
        if content is None and finish is None:
            return False  # no text at all
        reasoning, text = splitter.feed(content or "")
        if finish is not None:
            held_reasoning, held_text = splitter.flush()
            reasoning, text = reasoning + held_reasoning, text + held_text
        if not reasoning and text == (content or ""):
            return False
        if text or isinstance(content, str):
            delta["content"] = text
        for name in self._reasoning_names if reasoning else ():
            delta[name] = (delta.get(name) or "") + reasoning
        return self._count("think_split", True)

    def _tool_calls(self, index: object) -> ToolCalls:
        tools = self._tools.get(index)
        if tools is None:
            tools = self._tools[index] = ToolCalls(self.repairs)
        return tools

    def _normalise_tool_calls(self, choice: dict[str, Any], delta: dict[str, Any]) -> bool:
        index = choice.get("index", 0)
        if not isinstance(index, int | str):
            return False
        return self._tool_calls(index).normalise(delta["tool_calls"])

    def _split_tags(self, choice: dict[str, Any], delta: dict[str, Any]) -> bool:
        placed = _text_at(choice, delta)
        finish = choice.get("finish_reason")
        if placed is None or (placed[1] is None and finish is None):
            return False
        index, content = placed
        splitter = self._tool_tags.get(index)
        if splitter is None:
            splitter = self._tool_tags[index] = ToolTagSplitter()
        text, calls = splitter.feed(content or "")
        if finish is not None:
            text += splitter.flush()
        if not calls and text == (content or ""):
            return False
        if text or isinstance(content, str):
            delta["content"] = text
        if calls:
            self._add_calls(index, delta, calls)
        return True

    def _add_calls(self, index: object, delta: dict[str, Any], calls: list[dict[str, Any]]) -> None:
        tools = self._tool_calls(index)
        upstream = delta.get("tool_calls")
        found = [tools.add(call) for call in calls]
        delta["tool_calls"] = [*upstream, *found] if isinstance(upstream, list) else found
        self.repairs["tool_call_tags_split"] += len(calls)

    def _finish_with_tool_calls(self, choice: dict[str, Any]) -> bool:
        """A choice that made tool calls finished to have them run: OpenAI says ``tool_calls``."""
        index = choice.get("index", 0)
        tools = self._tools.get(index) if isinstance(index, int | str) else None
        if tools is None or not tools.seen:
            return False
        choice["finish_reason"] = "tool_calls"
        return self._count("tool_call_finish_reason", True)

    def _flush_held(self, index: object) -> list[bytes]:
        """The text and calls split-out tags held back when the stream ended."""
        reasoning, text = self._thinking[index].flush() if index in self._thinking else ("", "")
        calls: list[dict[str, Any]] = []
        if index in self._tool_tags:
            splitter = self._tool_tags[index]
            text, calls = splitter.feed(text)
            text += splitter.flush()
        if index in self._wrappers:
            text = self._wrappers[index].wrap(reasoning, text) + self._wrappers[index].close()
            reasoning = ""
        if not reasoning and not text and not calls:
            return []
        chunk = self.identity.chunk()
        chunk["choices"][0]["index"] = index
        delta = chunk["choices"][0]["delta"]
        delta["content"] = text
        for name in self._reasoning_names if reasoning else ():
            delta[name] = reasoning
        if calls:
            self._add_calls(index, delta, calls)
        return fit(chunk, self.settings.max_line_bytes, self.repairs)


def _text_at(choice: dict[str, Any], delta: dict[str, Any]) -> tuple[int | str, str | None] | None:
    """A choice's index and its delta's text content (None: no content), or
    None when either is of a shape the text repairs leave alone (parts, say)."""
    content = delta.get("content")
    index = choice.get("index", 0)
    if (content is not None and not isinstance(content, str)) or not isinstance(index, int | str):
        return None
    return index, content


def map_finish_reason(choice: dict[str, Any], settings: Settings, logged: set[str] | None = None) -> bool:
    """OpenAI's finish reasons only: TGI's names and ``""`` are a stop; unknown
    ones are logged, once per reason when ``logged`` remembers them."""
    reason = choice.get("finish_reason")
    if not settings.map_finish_reason or not isinstance(reason, str) or reason in OPENAI_FINISH_REASONS:
        return False  # only a name is mapped: any other value is sent on as it came
    if reason not in STOP_ALIASES and (logged is None or reason not in logged):
        log.warning("unknown finish_reason %r from the upstream, sent on as 'stop'", reason)
        if logged is not None:
            logged.add(reason)
    choice["finish_reason"] = "stop"
    return True


def rename_reasoning(holder: dict[str, Any], settings: Settings) -> bool:
    """Reasoning text under the one configured name (or both), in a delta or a message."""
    if settings.reasoning_field is ReasoningField.BOTH:
        return _mirror_reasoning(holder)
    other = _other_reasoning_name(settings)
    if other is None or other not in holder:
        return False
    text = holder.pop(other)
    target = settings.reasoning_field
    if holder.get(target.value) is None:  # servers that send both send the same text twice
        holder[target.value] = text
    return True


def _mirror_reasoning(holder: dict[str, Any]) -> bool:
    """The text one reasoning name carries, under the other name too."""
    texts = [holder.get(name) for name in REASONING]
    text = next((text for text in texts if isinstance(text, str)), None)
    if text is None or all(isinstance(each, str) for each in texts):
        return False  # none, or both already: servers that send both send the same text twice
    for name in REASONING:
        if not isinstance(holder.get(name), str):
            holder[name] = text
    return True


def _other_reasoning_name(settings: Settings) -> str | None:
    """The reasoning field that gets renamed (with ``both``: the one vLLM
    sends, checked first); None when both are kept."""
    target = settings.reasoning_field
    if target in (ReasoningField.KEEP, ReasoningField.THINK_TAGS):
        return None
    return "reasoning" if target is not ReasoningField.REASONING else "reasoning_content"


def reasoning_name(settings: Settings) -> str:
    """Where reasoning split out of ``<think>`` goes."""
    field = settings.reasoning_field
    if field in (ReasoningField.KEEP, ReasoningField.THINK_TAGS, ReasoningField.BOTH):
        return "reasoning_content"  # with think-tags, wrapped back into content next
    return field.value


def reasoning_names(settings: Settings) -> tuple[str, ...]:
    """Every name reasoning split out of ``<think>`` goes under."""
    return REASONING if settings.reasoning_field is ReasoningField.BOTH else (reasoning_name(settings),)


def _not_an_object(data: str) -> UpstreamError:
    return UpstreamError(
        f"the upstream sent an event that is not a JSON object: {data[:_EXCERPT]!r}; "
        "check that --upstream points at an OpenAI-compatible endpoint"
    )
