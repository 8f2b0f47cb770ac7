"""Moves ``<think>...</think>`` out of streamed content (pure).

Models served without a reasoning parser put their thoughts inline. The
tags may be split across chunks at any byte, so a tail that could be the
start of a tag is held back until the next piece shows what it is.

A chat template may open ``<think>`` in the prompt (Qwen3's and
DeepSeek-R1's do when thinking is on): the answer then starts inside the
thought and carries only the closing ``</think>``. Where the answer starts
is taken from the request when it says (:func:`prompt_opens_think`), else
from the answer itself: a ``</think>`` that comes before any ``<think>``,
within its first :data:`THOUGHT_HOLD` characters, closes a thought the
prompt opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "THOUGHT_HOLD",
    "ThinkSplitter",
    "ThinkWrapper",
    "prompt_opens_think",
    "tag_start_at_end",
    "wrapped",
]

_OPEN = "<think>"
_CLOSE = "</think>"
# How much of an answer's start a stream holds while the request did not say
# whether the prompt opened a thought: enough for the empty or short thought a
# model writes when it chooses not to think (Qwen3: "\n\n</think>\n\n"), small
# enough that an answer with no thought waits only for its first sentence or
# so (some 60 tokens). A longer thought cannot be told from an answer without
# holding the answer: the request must say (enable_thinking).
THOUGHT_HOLD = 256
# The chat-template switches that open (true) or close (false) the thought in
# the prompt: Qwen3's and most others', and DeepSeek-V3.1's.
_SWITCHES = ("enable_thinking", "thinking")


def prompt_opens_think(request: Mapping[str, Any]) -> bool | None:
    """Whether the request had the chat template open ``<think>`` in the
    prompt (true), close it there (false), or did not say (None)."""
    kwargs = request.get("chat_template_kwargs")
    if isinstance(kwargs, Mapping):
        for name in _SWITCHES:
            value = kwargs.get(name)
            if isinstance(value, bool):
                return value
    return None


class ThinkSplitter:
    """One choice's text, split into reasoning and content.

    ``opened``: what the request said of the prompt (:func:`prompt_opens_think`).
    True: the answer starts inside the thought, which its first ``</think>``
    ends (a ``<think>`` before that is the model writing the opening again,
    and dropped, as vLLM's deepseek_r1 parser does). False: the answer starts
    outside, as an answer with no tags does. None: undecided, and the answer's
    start is held, at most ``hold`` characters (None: the whole text is
    already here, a body's), until its first tag decides: a ``</think>``
    means what came before was reasoning; a ``<think>``, no tag within the
    hold, or the end mean it was content.
    """

    def __init__(self, opened: bool | None = None, hold: int | None = THOUGHT_HOLD) -> None:
        self.inside = opened is True
        self._first = opened is not False  # still in the part of the answer the prompt may have opened
        self._hold = hold
        self._held = ""

    def settle(self) -> None:
        """The server sent reasoning of its own (it has a reasoning parser): the
        content that comes is the answer, whatever the prompt opened."""
        if self._first:
            self._first = self.inside = False

    def feed(self, text: str) -> tuple[str, str]:
        """The ``(reasoning, content)`` this piece completes."""
        text, self._held = self._held + text, ""
        parts: dict[bool, list[str]] = {True: [], False: []}
        start = self._opening(text, parts) if self._first else 0
        while 0 <= start < len(text):
            tag = _CLOSE if self.inside else _OPEN
            found = text.find(tag, start)
            if found < 0:
                end = len(text) - tag_start_at_end(text, tag, start)
                parts[self.inside].append(text[start:end])
                self._held = text[end:]
                break
            parts[self.inside].append(text[start:found])
            start = found + len(tag)
            self.inside = not self.inside
        return "".join(parts[True]), "".join(parts[False])

    def _opening(self, text: str, parts: dict[bool, list[str]]) -> int:
        """The answer's start, up to its first tag: where the tags are looked
        for as usual from, or -1 while it is still undecided (held)."""
        close = text.find(_CLOSE)
        if self.inside:  # the prompt opened the thought
            end = (
                close
                if close >= 0
                else len(text) - max(tag_start_at_end(text, _OPEN), tag_start_at_end(text, _CLOSE))
            )
            parts[True].append(text[:end].replace(_OPEN, ""))
            if close < 0:
                self._held = text[end:]
                return -1
            self._first = self.inside = False
            return close + len(_CLOSE)
        opening = text.find(_OPEN, 0, close if close >= 0 else len(text))
        hold = len(text) if self._hold is None else self._hold
        if opening < 0 and 0 <= close <= hold:  # it closed a thought the prompt opened
            parts[True].append(text[:close])
            self._first = False
            return close + len(_CLOSE)
        if opening < 0 and close < 0 and len(text) < hold + len(_CLOSE):
            self._held = text  # a </think> may yet come within the hold
            return -1
        self._first = False  # an answer: tags are split as usual
        return 0

    def flush(self) -> tuple[str, str]:
        """End of the stream: what was held back was text after all."""
        held, self._held = self._held, ""
        self._first = False
        return (held, "") if self.inside else ("", held)


class ThinkWrapper:
    """Reasoning back into content, inside ``<think>...</think>``: the reverse
    of the splitter, for clients that show only content."""

    def __init__(self) -> None:
        self.open = False

    def wrap(self, reasoning: str, content: str) -> str:
        parts = []
        if reasoning:
            if not self.open:
                parts.append(_OPEN)
                self.open = True
            parts.append(reasoning)
        if content and self.open:
            parts.append(_CLOSE)
            self.open = False
        parts.append(content)
        return "".join(parts)

    def close(self) -> str:
        """The closing tag, if one is due."""
        if not self.open:
            return ""
        self.open = False
        return _CLOSE


def wrapped(reasoning: str, content: str) -> str:
    """A whole answer's reasoning and content as one text."""
    return f"{_OPEN}{reasoning}{_CLOSE}{content}" if reasoning else content


def tag_start_at_end(text: str, tag: str, start: int = 0) -> int:
    """How many trailing characters of ``text[start:]`` could begin ``tag``."""
    for size in range(min(len(tag) - 1, len(text) - start), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
