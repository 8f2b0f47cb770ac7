"""Moves ``<think>...</think>`` out of streamed content (pure).

Models served without a reasoning parser put their thoughts inline. The
tags may be split across chunks at any byte, so a tail that could be the
start of a tag is held back until the next piece shows what it is.
"""

from __future__ import annotations

__all__ = ["ThinkSplitter", "tag_start_at_end"]

_OPEN = "<think>"
_CLOSE = "</think>"


class ThinkSplitter:
    def __init__(self) -> None:
        self.inside = False
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """The ``(reasoning, content)`` this piece completes."""
        text = self._held + text
        self._held = ""
        parts: dict[bool, list[str]] = {True: [], False: []}
        while text:
            tag = _CLOSE if self.inside else _OPEN
            found = text.find(tag)
            if found < 0:
                keep = tag_start_at_end(text, tag)
                parts[self.inside].append(text[: len(text) - keep])
                self._held = text[len(text) - keep :]
                break
            parts[self.inside].append(text[:found])
            text = text[found + len(tag) :]
            self.inside = not self.inside
        return "".join(parts[True]), "".join(parts[False])

    def flush(self) -> tuple[str, str]:
        """End of the stream: what was held back was text after all."""
        held, self._held = self._held, ""
        return (held, "") if self.inside else ("", held)


def tag_start_at_end(text: str, tag: str) -> int:
    """How many trailing characters of ``text`` could begin ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
