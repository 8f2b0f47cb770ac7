"""Moves ``<think>...</think>`` out of streamed content (pure).

Models served without a reasoning parser put their thoughts inline. The
tags may be split across chunks at any byte, so a tail that could be the
start of a tag is held back until the next piece shows what it is.
"""

from __future__ import annotations

__all__ = ["ThinkSplitter", "ThinkWrapper", "tag_start_at_end", "wrapped"]

_OPEN = "<think>"
_CLOSE = "</think>"


class ThinkSplitter:
    def __init__(self) -> None:
        self.inside = False
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """The ``(reasoning, content)`` this piece completes."""
        text, self._held = self._held + text, ""
        parts: dict[bool, list[str]] = {True: [], False: []}
        start = 0  # what lies before is done with: re-slicing it per tag would cost n squared
        while start < len(text):
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

    def flush(self) -> tuple[str, str]:
        """End of the stream: what was held back was text after all."""
        held, self._held = self._held, ""
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
