"""Tool calls in the shape OpenAI clients accumulate (pure).

Clients merge streamed tool calls by ``index`` and concatenate every string
they are given: a missing index is an exception in the openai SDK, and a name
or id repeated on each delta comes out doubled (``get_weatherget_weather``,
llama.cpp #13774). Local servers differ here more than anywhere else (vllm
#9693, sglang #35542): these put each choice's calls, delta by delta, into
OpenAI's shape, and turn ``<tool_call>`` text into calls where asked.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sse_adapter.repair.think import tag_start_at_end

__all__ = [
    "ToolCalls",
    "ToolTagSplitter",
    "arguments_text",
    "new_call_id",
    "normalise_message_calls",
    "offers_tools",
    "parse_tool_block",
    "split_tool_tags",
]

_OPEN = "<tool_call>"
_CLOSE = "</tool_call>"
# How much of an open block a stream holds back, waiting for it to close:
# past this it was no call (prose about the tag, or a call too long to wait
# for) and goes on as text, instead of holding the rest of the answer.
_HOLD = 4096


def offers_tools(request: Mapping[str, Any]) -> bool:
    """Whether a request let the model call tools: only then is ``<tool_call>``
    text a call. Without tools, or with ``tool_choice: "none"``, the model
    was told it has none, and tags it writes are text (an example, say)."""
    tools = request.get("tools")
    return isinstance(tools, list) and bool(tools) and request.get("tool_choice") != "none"


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def arguments_text(value: object) -> str:
    """Arguments as the string clients concatenate: null is empty, anything else its JSON once."""
    if isinstance(value, str):
        return value
    return "" if value is None else orjson.dumps(value).decode()


@dataclass(slots=True)
class _Call:
    name: str
    whole: str | None = None  # arguments that came as one JSON value, as serialised


class ToolCalls:
    """One choice's tool calls in one stream: who each delta belongs to, and
    what its first delta already said."""

    def __init__(self, repairs: Counter[str]) -> None:
        self.repairs = repairs
        self._calls: dict[int, _Call] = {}
        self._by_id: dict[str, int] = {}
        self._last: int | None = None
        # One past the highest index so far: a max over every call on each
        # new one would make a stream of n calls cost n squared.
        self._next = 0

    @property
    def seen(self) -> bool:
        return bool(self._calls)

    def next_index(self) -> int:
        return self._next

    def add(self, call: dict[str, Any]) -> dict[str, Any]:
        """A whole call found in text, as the one delta that carries it."""
        index = self.next_index()
        self._start(index, call["name"])
        self._last = index
        return {"index": index, "id": new_call_id(), "type": "function", "function": call}

    def normalise(self, calls: object) -> bool:
        """Put each tool-call delta of a ``delta.tool_calls`` list in shape, in place."""
        changed = False
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                changed |= self._delta(call)
        return changed

    def _delta(self, call: dict[str, Any]) -> bool:
        index = self._index(call)
        changed = type(call.get("index")) is not int
        if changed:
            call["index"] = index
            self.repairs["tool_call_index_filled"] += 1
        self._last = index
        state = self._calls.get(index)
        if state is None:
            state = self._start(index, _name(call))
            changed |= _identify(call, self.repairs)
        else:
            changed |= self._later(call, state)
        return self._arguments(call, state) or changed

    def _start(self, index: int, name: str) -> _Call:
        state = self._calls[index] = _Call(name)
        self._next = max(self._next, index + 1)
        return state

    def _index(self, call: dict[str, Any]) -> int:
        """The delta's own index; else the call its id names; else the call
        it continues, unless it names another function (a new call)."""
        index, call_id = call.get("index"), call.get("id")
        if type(index) is int:
            if isinstance(call_id, str) and call_id:
                self._by_id.setdefault(call_id, index)
            return index
        if isinstance(call_id, str) and call_id:
            known = self._by_id.get(call_id)
            return known if known is not None else self._by_id.setdefault(call_id, self.next_index())
        if self._last is None or _names_another(call, self._calls[self._last]):
            return self.next_index()
        return self._last

    def _later(self, call: dict[str, Any], state: _Call) -> bool:
        """A later delta carries argument fragments only: what the first said is not repeated."""
        dropped = [call.pop(key) for key in ("id", "type") if key in call]
        function = call.get("function")
        if isinstance(function, dict) and "id" in function:
            dropped.append(function.pop("id"))
        if isinstance(function, dict) and "name" in function:
            name = function["name"]
            if not name or name == state.name:
                dropped.append(function.pop("name"))
            elif isinstance(name, str) and not state.name:
                state.name = name  # a name that comes late is the call's name, sent once
        if dropped:
            self.repairs["tool_call_repeat_dropped"] += 1
        return bool(dropped)

    def _arguments(self, call: dict[str, Any], state: _Call) -> bool:
        function = call.get("function")
        if not isinstance(function, dict) or "arguments" not in function:
            return False
        value = function["arguments"]
        if isinstance(value, str):
            return False
        text = arguments_text(value)
        if value is not None:
            # Some servers send the whole object again at the end: it is sent once.
            text, state.whole = ("" if text == state.whole else text), text
        function["arguments"] = text
        self.repairs["tool_call_arguments_string"] += 1
        return True


def normalise_message_calls(message: dict[str, Any], repairs: Counter[str]) -> bool:
    """A whole message's tool calls (a non-stream body): each with its id,
    its type and its arguments as a string. True when it has any."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return False
    for call in calls:
        if isinstance(call, dict):
            _identify(call, repairs)
            function = call.get("function")
            if (
                isinstance(function, dict)
                and "arguments" in function
                and not isinstance(function["arguments"], str)
            ):
                function["arguments"] = arguments_text(function["arguments"])
                repairs["tool_call_arguments_string"] += 1
    return True


def split_tool_tags(content: str) -> tuple[str, list[dict[str, Any]]]:
    """A whole content's ``<tool_call>`` blocks as calls, and the text around them.

    Nothing waits here, so a block of any length may be a call.
    """
    splitter = ToolTagSplitter(len(content))
    text, calls = splitter.feed(content)
    return text + splitter.flush(), calls


def _identify(call: dict[str, Any], repairs: Counter[str]) -> bool:
    """The first delta of a call, or a whole call, says who it is: its id and its type."""
    changed = False
    if not (isinstance(call.get("id"), str) and call["id"]):
        function = call.get("function")
        inner = function.pop("id", None) if isinstance(function, dict) else None  # llama.cpp b5481
        call["id"] = inner if isinstance(inner, str) and inner else new_call_id()
        repairs["tool_call_id_filled"] += 1
        changed = True
    if not call.get("type"):
        call["type"] = "function"
        repairs["tool_call_type_filled"] += 1
        changed = True
    return changed


def _name(call: dict[str, Any]) -> str:
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else ""


def _names_another(call: dict[str, Any], last: _Call) -> bool:
    name = _name(call)
    return bool(name) and bool(last.name) and name != last.name


def parse_tool_block(inner: str) -> dict[str, Any] | None:
    """The call a ``<tool_call>`` block holds (Hermes / Qwen: ``{"name", "arguments"}``), or None."""
    try:
        block = orjson.loads(inner)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(block, dict):
        return None
    name = block.get("name")
    arguments = block.get("arguments", block.get("parameters", {}))
    if not isinstance(name, str) or not name:
        return None
    return {"name": name, "arguments": arguments_text(arguments)}


class ToolTagSplitter:
    """Moves ``<tool_call>...</tool_call>`` blocks out of streamed content.

    Tags may be cut across chunks at any character, so a tail that could
    begin a tag is held back; a block is held whole until it closes, up to
    ``limit`` characters past its tag, past which it was no call and goes
    out as text.
    """

    def __init__(self, limit: int = _HOLD) -> None:
        self.limit = limit
        self._held = ""
        self._block: list[str] | None = None  # inside a block: its text so far
        self._size = 0

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """The content this piece completes, and the calls (``{"name", "arguments"}``)."""
        text, self._held = self._held + text, ""
        said: list[str] = []
        calls: list[dict[str, Any]] = []
        start = 0  # what lies before is done with: re-slicing it per tag would cost n squared
        while start < len(text):
            tag = _CLOSE if self._block is not None else _OPEN
            found = text.find(tag, start)
            if found < 0:
                end = len(text) - tag_start_at_end(text, tag, start)
                self._take(text[start:end], said)
                self._held = text[end:]
                break
            self._take(text[start:found], said)
            start = found + len(tag)
            self._toggle(said, calls)
        return "".join(said), calls

    def flush(self) -> str:
        """End of the stream: what was held back, an unclosed block too, was text after all."""
        held, self._held = self._held, ""
        if self._block is None:
            return held
        block, self._block = self._block, None
        return _OPEN + "".join(block) + held

    def _take(self, text: str, said: list[str]) -> None:
        if self._block is None:
            said.append(text)
            return
        self._block.append(text)
        self._size += len(text)
        if self._size > self.limit:
            said.append(self.flush())

    def _toggle(self, said: list[str], calls: list[dict[str, Any]]) -> None:
        if self._block is None:
            self._block, self._size = [], 0
            return
        inner = "".join(self._block)
        self._block = None
        call = parse_tool_block(inner)
        if call is None:
            said.append(_OPEN + inner + _CLOSE)  # not a call: the text stays as it came
        else:
            calls.append(call)
