"""An incremental, bounded server-sent events decoder (sans-I/O).

It follows WHATWG HTML, section 9.2.6 "Interpreting an event stream":
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Lines are split on the raw bytes. CR and LF never occur inside a UTF-8
multi-byte sequence, so a character split across two reads needs no
incremental text decoder: each complete line is decoded on its own.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

from sse_adapter.errors import EventTooLarge

__all__ = ["Event", "SSEDecoder"]

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n")


class Event(NamedTuple):
    """One dispatched event, as the spec defines it.

    Immutable like a frozen dataclass, but made per event on the hot path,
    where a frozen dataclass's ``__init__`` (three ``object.__setattr__``
    calls) costs more than the decoding itself.
    """

    data: str
    event: str = "message"
    last_event_id: str = ""


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events they complete.

    ``max_event_bytes`` bounds everything held between two dispatches (the
    unfinished line plus the data lines gathered so far); past it
    :class:`EventTooLarge` is raised, so no input can grow memory unbounded.

    ``field_events`` names fields the spec would ignore but a server uses to
    say something: each such line is dispatched at once as an event of that
    type (llama.cpp's legacy ``error: {...}`` line). None by default.
    """

    def __init__(
        self, max_event_bytes: int = 16 * 1024 * 1024, field_events: frozenset[str] = frozenset()
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.field_events = field_events
        self.retry: int | None = None
        self._head = b""  # the first bytes, until we know whether they hold a BOM
        self._started = False
        self._after_cr = False  # the last read ended in CR: a following LF is its pair
        self._fragments: list[bytes] = []  # the unfinished line, joined once when it ends
        self._held = 0  # bytes in _fragments and _data, for the bound
        self._data: list[str] = []
        self._event = ""
        self._last_event_id = ""
        # The framing quirks seen, for the operator: each is valid SSE, and One-API chokes on it.
        self.quirks: Counter[str] = Counter()

    @property
    def received_any(self) -> bool:
        """Whether any byte has been fed at all."""
        return self._started or bool(self._head)

    @property
    def buffered(self) -> int:
        """Bytes held for the event not yet dispatched; never more than ``max_event_bytes``."""
        return self._held + len(self._head)

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode one read; the events it completes, in order."""
        if (
            chunk[-2:] == b"\n\n"
            and self._started  # between two events, nothing held: the read may be taken whole
            and not (self._fragments or self._data or self._event or self._after_cr)
        ):
            if chunk[:6] == b"data: ":
                whole = self._whole_events(chunk)
            elif chunk[:7] == b"event: ":
                whole = self._whole_typed(chunk)
            else:
                whole = None
            if whole is not None:
                return whole
        chunk = self._strip_bom(chunk)
        if not chunk:
            return []
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if chunk.find(b"\r") >= 0:
            crlf = chunk.count(b"\r\n")
            self.quirks["crlf_line_ends"] += crlf
            self.quirks["cr_line_ends"] += chunk.count(b"\r") - crlf
        events: list[Event] = []
        try:
            start = 0
            for match in _EOL.finditer(chunk):
                self._line(self._take_line(chunk[start : match.start()]), events)
                start = match.end()
            if start < len(chunk):
                self._hold(chunk[start:])
        except EventTooLarge as exc:
            exc.completed = events
            raise
        return events

    def flush(self) -> list[Event]:
        """End of input: the event still open, if it has data.

        The spec drops an event the stream ended inside of, because a browser
        will reconnect and be sent it again. A relay gets no second chance, so
        the last line and event are kept rather than lose the final tokens.
        """
        events: list[Event] = []
        if self._fragments:
            self._line(self._take_line(b""), events)
        self._line(b"", events)
        return events

    def _whole_events(self, chunk: bytes) -> list[Event] | None:
        """The common read, decoded at once: whole events of one ``data: `` line
        each, LF only, as vLLM, SGLang, llama.cpp and TGI >= 2.1 send them.
        None for any other shape, which the line-by-line path takes."""
        # bytes.find, not `in`: on Python 3.11 `in` first tries the operand as an
        # int and raises and clears a TypeError, which costs more than the search.
        body = chunk[6:-2]
        if body.find(b"\r") >= 0 or len(body) > self.max_event_bytes:
            return None
        last_id = self._last_event_id
        if body.find(b"\n") < 0:
            return [Event(body.decode("utf-8", "replace"), "message", last_id)]
        parts = body.split(b"\n\ndata: ")
        if any(part.find(b"\n") >= 0 for part in parts):
            return None
        return [Event(part.decode("utf-8", "replace"), "message", last_id) for part in parts]

    def _whole_typed(self, chunk: bytes) -> list[Event] | None:
        """The common read of a Responses or Messages stream, decoded at once:
        whole events of one ``event: `` and one ``data: `` line each, LF only,
        as vLLM, llama-server and OpenAI send them. None for any other shape."""
        body = chunk[:-2]
        if body.find(b"\r") >= 0 or len(body) > self.max_event_bytes:
            return None
        if body.count(b"\n") == 1:  # one event, the common read: no split, no loop
            at = body.find(b"\ndata: ")
            if at < 0:
                return None
            kind = body[7:at].decode("utf-8", "replace") or "message"
            return [Event(body[at + 7 :].decode("utf-8", "replace"), kind, self._last_event_id)]
        events = []
        for part in body.split(b"\n\n"):
            name, data_line, data = part.partition(b"\ndata: ")
            if not data_line or name[:7] != b"event: " or name.find(b"\n") >= 0 or data.find(b"\n") >= 0:
                return None
            kind = name[7:].decode("utf-8", "replace") or "message"
            events.append(Event(data.decode("utf-8", "replace"), kind, self._last_event_id))
        return events

    def _strip_bom(self, chunk: bytes) -> bytes:
        if self._started:
            return chunk
        head = self._head + chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head  # too short to tell yet
            return b""
        self._started = True
        self._head = b""
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _hold(self, fragment: bytes) -> None:
        self._held += len(fragment)
        if self._held > self.max_event_bytes:
            self._fragments.clear()  # drop what was held: memory stays bounded
            self._reset_event()
            raise EventTooLarge(
                f"an upstream event exceeded {self.max_event_bytes} bytes without ending; "
                "raise --max-event-bytes if the model server really sends events this large"
            )
        self._fragments.append(fragment)

    def _take_line(self, tail: bytes) -> bytes:
        if self._held + len(tail) > self.max_event_bytes:
            self._hold(tail)  # raises EventTooLarge
        if not self._fragments:
            return tail
        line = b"".join(self._fragments) + tail
        self._held -= len(line) - len(tail)
        self._fragments.clear()
        return line

    def _line(self, raw: bytes, events: list[Event]) -> None:
        if not raw:
            self._dispatch(events)
            return
        line = raw.decode("utf-8", "replace")
        name, colon, value = line.partition(":")
        if not name and colon:
            return  # a comment
        if value.startswith(" "):
            value = value[1:]
        elif value and name == "data":
            self.quirks["no_space_after_data"] += 1
        if name == "data":
            self._data.append(value)
            self._held += len(raw)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        elif name in self.field_events:
            events.append(Event(value, name, self._last_event_id))
        # any other field name is ignored, as the spec says

    def _dispatch(self, events: list[Event]) -> None:
        if self._data:
            events.append(Event("\n".join(self._data), self._event or "message", self._last_event_id))
        self._reset_event()

    def _reset_event(self) -> None:
        self._data.clear()
        self._event = ""
        self._held = 0  # no line is open when an event ends
