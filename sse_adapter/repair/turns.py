"""What each choice of a stream generated, kept to count its tokens (pure).

A server that sends no usage bills what the model generated, not what the
client sees: the reasoning, the tool-call markup, the stop token and a
matched stop string count too (README, "Billing"). So a stream that may need
counting keeps, per choice, the pieces the chat template renders back into
the assistant turn: content, reasoning and tool calls (name and arguments),
and how the choice ended (``finish_reason``; vLLM's ``stop_reason``: the
matched stop string, or the id of a stop token).

Pieces are appended as they come and joined once, when the stream is
counted: linear in the answer, one ``list.append`` per text delta. The
choices kept are bounded (``MAX_CHOICES``): an upstream that numbers more
gets no count (none is made up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sse_adapter.repair.chunks import REASONING

__all__ = ["MAX_CHOICES", "Call", "Turn", "Turns"]

MAX_CHOICES = 128  # n is small in practice; an upstream's index is not trusted to be


@dataclass(slots=True)
class Call:
    """One tool call, as its deltas built it."""

    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Turn:
    """One choice's generated answer."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[object, Call] = field(default_factory=dict)
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM: a str = the stop string matched, an int = a stop token

    def call(self, index: object) -> Call:
        found = self.calls.get(index)
        if found is None:
            found = self.calls[index] = Call()
        return found

    def message(
        self, prefill: str = "", reasoning: str = "field", stop_shown: bool = False
    ) -> dict[str, Any]:
        """The assistant turn as the chat template renders it back: ``prefill`` is the
        request's own start of it (``continue_final_message``), a matched stop string
        ends its content (the model generated it; the server cut it from the text, unless
        ``stop_shown``: vLLM's ``include_stop_str_in_output``).

        ``reasoning``: ``field`` for the template to render (``reasoning_content``), ``raw``
        as the model wrote it after a prompt that opened ``<think>`` (the reasoning,
        ``</think>``, the content), for a template that drops it; ``none`` to leave it out.
        Reasoning that never closed (no content, no calls: the length ran out, or the
        server took a whole answer for reasoning) is the model's whole text, as written."""
        content = prefill + "".join(self.content)
        if isinstance(self.stop_reason, str) and self.finish_reason == "stop" and not stop_shown:
            content += self.stop_reason
        thought = "".join(self.reasoning)
        if thought and not content and not self.calls:
            return {"role": "assistant", "content": prefill + thought}
        if thought and reasoning == "raw":
            content = prefill + thought + "</think>" + content[len(prefill) :]
        turn: dict[str, Any] = {"role": "assistant", "content": content}
        if thought and reasoning == "field":
            turn["reasoning_content"] = turn["reasoning"] = thought
        if self.calls:
            turn["tool_calls"] = [
                {
                    "id": f"call_{number}",
                    "type": "function",
                    "function": {"name": "".join(call.name), "arguments": "".join(call.arguments)},
                }
                for number, call in enumerate(self.calls.values())
            ]
        return turn

    @property
    def ended_on_stop_token(self) -> bool:
        """The model generated a stop token (EOS, or one of ``stop_token_ids``): not a
        stop string, not the length limit. Servers count that token as generated."""
        return self.finish_reason in ("stop", "tool_calls") and not isinstance(self.stop_reason, str)

    @property
    def reasons_aside(self) -> bool:
        """Reasoning beside content or calls: whether the template renders it is measured."""
        return bool(self.reasoning) and bool(self.content or self.calls)


class Turns:
    """A stream's turns by choice index; ``overflowed`` once an upstream numbered too many."""

    def __init__(self) -> None:
        self.by_choice: dict[object, Turn] = {}
        self.overflowed = False
        self.first = self.of(0)  # the common case, for the per-event fast path

    def of(self, index: object) -> Turn:
        turn = self.by_choice.get(index)
        if turn is None:
            if len(self.by_choice) >= MAX_CHOICES:
                self.overflowed = True
                return Turn()  # collected nowhere: the stream gets no count
            turn = self.by_choice[index] = Turn()
        return turn

    @property
    def generated(self) -> bool:
        """Whether any choice generated anything: text, reasoning or a tool call."""
        return any(any(turn.content) or any(turn.reasoning) or turn.calls for turn in self.by_choice.values())

    def add_chat(self, choice: dict[str, Any]) -> None:
        """A chat choice's delta (or a completion's text) into its turn."""
        turn = self.of(choice.get("index", 0))
        delta = choice.get("delta")
        holder = delta if type(delta) is dict else choice
        for name in ("content", "text"):
            if isinstance(text := holder.get(name), str) and text:
                turn.content.append(text)
        for name in REASONING:
            if isinstance(text := holder.get(name), str) and text:
                turn.reasoning.append(text)
                break  # servers that send both send the same text twice
        calls = holder.get("tool_calls")
        for number, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                _add_call(turn.call(call.get("index", number)), call.get("function"))

    def end(self, choice: dict[str, Any]) -> None:
        """How a choice ended, from its finishing chunk."""
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            turn = self.of(choice.get("index", 0))
            turn.finish_reason = finish
            stop = choice.get("stop_reason")
            turn.stop_reason = stop if isinstance(stop, str | int) and not isinstance(stop, bool) else None


def _add_call(call: Call, function: object) -> None:
    if not isinstance(function, dict):
        return
    if isinstance(name := function.get("name"), str):
        call.name.append(name)
    if isinstance(arguments := function.get("arguments"), str):
        call.arguments.append(arguments)
