"""What the relay asks of a stream format (pure): the one small interface
each format's repairer meets (shared/architecture.md, "one relay, several
formats").

The relay reads, decodes, times and writes; it knows no event names. A
format's repairer turns each upstream event into what goes out, and says
how a stream of its kind ends well, ends in failure, and refuses upfront.
Chat Completions (and legacy completions) live in :mod:`.stream`, OpenAI
Responses in :mod:`.responses`, Anthropic Messages in :mod:`.messages`.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Any, Protocol

from sse_adapter.errors import AdapterError
from sse_adapter.repair.turns import Turns
from sse_adapter.sse.decoder import Event

__all__ = ["Format", "StreamFormat", "Usage"]

# Usage as the tokenizer counts it, in Chat Completions' names; each format
# puts it where its clients read it, under its own names.
Usage = dict[str, Any]


class StreamFormat(Protocol):
    """One stream's repairs in one format's shape.

    ``finished``: the upstream's last event came (``[DONE]``, a terminal
    event): the relay reads no further. ``saw_usage`` and ``turns`` tell the
    relay whether usage must be counted, and from what. ``usage``: the one
    the stream ended with (the server's or counted, sent or not), in Chat
    Completions' names, for the access log.
    """

    finished: bool
    saw_usage: bool
    usage: Usage | None
    turns: Turns | None
    repairs: Counter[str]

    @property
    def stream_id(self) -> str:
        """The stream's id as its client sees it, for the log; empty before it has one."""
        ...

    def repair(self, event: Event) -> list[bytes]:
        """The units one upstream event becomes; raises the upstream's error."""
        ...

    def encode(self, units: list[bytes]) -> bytes:
        """The wire bytes of what :meth:`repair` and :meth:`finish` return."""
        ...

    def check_end(self) -> None:
        """Raises when the stream, now over, was no answer (or not all of one)."""
        ...

    def finish(self, failed: bool = False, usage: Usage | None = None) -> list[bytes]:
        """The units held back, released at the end (with ``usage`` as counted
        when the upstream sent none); raises when the stream was no answer."""
        ...

    def closing(self) -> bytes:
        """The frames after a good stream's last units (chat's ``[DONE]``)."""
        ...

    def failure(self, error: AdapterError) -> bytes:
        """The frames that end a stream in ``error`` once its 200 has gone out."""
        ...

    def error_body(self, error: AdapterError) -> bytes:
        """The JSON body of ``error`` answered before the stream started."""
        ...


class Format(enum.Enum):
    """The relayed routes' formats, each named as the route's metrics label."""

    CHAT = "chat_completions"
    COMPLETION = "completions"
    RESPONSES = "responses"
    MESSAGES = "messages"

    @property
    def is_chat(self) -> bool:
        """Chat Completions or legacy completions: OpenAI chunks, ``[DONE]``, ``stream_options``."""
        return self in (Format.CHAT, Format.COMPLETION)
