"""One stream's upstream bytes in, the payloads to send out (pure).

The decoder and the repairer, run together the one way the relay, the
non-stream assembler and the probe all need: every read gives the payloads
it completes and, when something in it failed, the error, which comes after
the payloads that preceded it, so nothing before a fault is lost.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from sse_adapter.errors import AdapterError, EmptyStream, EventTooLarge, InternalError
from sse_adapter.repair.format import StreamFormat
from sse_adapter.sse.decoder import Event, SSEDecoder

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)

_FIELD_EVENTS = frozenset({"error"})  # llama.cpp before Sep 2025: a bare `error: {...}` line


class Pipeline:
    def __init__(self, repairer: StreamFormat, max_event_bytes: int) -> None:
        self.repairer = repairer
        self.decoder = SSEDecoder(max_event_bytes, field_events=_FIELD_EVENTS)

    @property
    def finished(self) -> bool:
        """The upstream sent its ``[DONE]``: read no further."""
        return self.repairer.finished

    def feed(self, raw: bytes) -> tuple[list[bytes], bool, AdapterError | None]:
        """One read: its payloads, whether it completed an event, and its failure if any."""
        try:
            events = self.decoder.feed(raw)
        except EventTooLarge as too_large:
            payloads, failure = self._repair_all(too_large.completed)
            return payloads, bool(too_large.completed), failure or too_large
        if len(events) == 1:  # the common read: one event, repaired without a loop or a call
            try:
                return self.repairer.repair(events[0]), True, None
            except AdapterError as error:
                return [], True, error
            except Exception:
                return [], True, _bug()
        payloads, failure = self._repair_all(events)
        return payloads, bool(events), failure

    def flush(self) -> tuple[list[bytes], AdapterError | None]:
        """The end of the body: the event still open, if any."""
        if self.repairer.finished:
            return [], None
        return self._repair_all(self.decoder.flush())

    @property
    def repairs(self) -> Counter[str]:
        """Every repair made: the framing quirks decoded away, and the chunks' own."""
        return self.decoder.quirks + self.repairer.repairs

    def finish(self, failed: bool = False, usage: dict[str, Any] | None = None) -> list[bytes]:
        """The last payloads (held text, then usage); raises if the stream was no answer."""
        if not failed:
            self.check_end()
        return self.repairer.finish(failed, usage)

    def check_end(self) -> None:
        """Raises when the stream, now over, was no answer: before counting what it said."""
        if not self.decoder.received_any:
            raise EmptyStream(
                "the upstream ended the stream without sending anything. Most often the prompt is "
                "longer than the model's context (llama-cpp-python ends such a stream silently and says "
                "why only in its log); else the model server failed before its first token: look at "
                "its log"
            )
        self.repairer.check_end()

    def _repair_all(self, events: list[Event]) -> tuple[list[bytes], AdapterError | None]:
        """The events' payloads, up to the first that fails: what came before a
        fault always goes out before its error, even a fault of ours."""
        repairer = self.repairer
        payloads: list[bytes] = []
        for event in events:
            try:
                payloads += repairer.repair(event)
            except AdapterError as error:
                return payloads, error
            except Exception:
                return payloads, _bug()
            if repairer.finished:
                break
        return payloads, None


def _bug() -> InternalError:
    log.exception("sse-adapter failed to repair an upstream event")
    return InternalError("sse-adapter failed on this stream; see its log")
