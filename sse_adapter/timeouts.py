"""When to give up on the upstream, and the watch that enforces it.

Three clocks (shared/keepalive.md): the wait for the first event, which a
reasoning model may stretch to minutes (heartbeats keep the client alive
meanwhile); the silence between reads once it streams, reset by any byte,
comments included; and an optional cap on the whole exchange.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from sse_adapter.errors import UpstreamTimeout
from sse_adapter.settings import Settings

__all__ = ["Deadlines", "Watch"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Pure: the deadline in force, and what passing it means."""

    started: float
    first_byte: float
    idle: float
    total: float  # 0: none

    @classmethod
    def of(cls, settings: Settings, started: float) -> Deadlines:
        return cls(started, settings.first_byte_timeout, settings.idle_timeout, settings.total_timeout)

    def next(self, last_read: float, streaming: bool) -> tuple[float, str]:
        if streaming:
            at, why = last_read + self.idle, f"sent nothing for {self.idle:g} s (--idle-timeout)"
        else:
            at, why = (
                self.started + self.first_byte,
                f"sent no answer within {self.first_byte:g} s (--first-byte-timeout)",
            )
        if self.total and self.started + self.total < at:
            at, why = self.started + self.total, f"did not finish within {self.total:g} s (--total-timeout)"
        return at, why


class Watch:
    """Times every wait on one upstream exchange against its deadlines."""

    def __init__(
        self, settings: Settings, url: str, started: float, tap: Callable[[bytes], None] | None = None
    ) -> None:
        self.deadlines = Deadlines.of(settings, started)
        self.url = url
        self.last_read = started
        self.streaming = False  # the first event has come: the idle clock runs
        self._tap = tap  # --trace-dir's recorder of the upstream's bytes

    def received(self, data: bytes, event: bool) -> None:
        """Bytes came from the upstream: any byte resets the idle clock."""
        self.last_read = asyncio.get_running_loop().time()  # anyio's clock costs a lookup per call
        self.streaming = self.streaming or event
        if self._tap is not None:
            self._tap(data)

    async def timed(self, awaitable: Awaitable[T]) -> T:
        at, why = self.deadlines.next(self.last_read, self.streaming)
        with anyio.move_on_after(at - asyncio.get_running_loop().time()):
            return await awaitable
        raise UpstreamTimeout(f"the upstream at {self.url} {why}; check that the model server is not stuck")
