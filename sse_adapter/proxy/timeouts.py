"""When to give up on the upstream, and the watch that enforces it.

Three clocks (shared/keepalive.md): the wait for the first event, which a
reasoning model may stretch to minutes (heartbeats keep the client alive
meanwhile); the silence between reads once it streams, reset by any byte,
comments included; and an optional cap on the whole exchange.

The watch is one event-loop timer per exchange, not a cancel scope per read:
a read costs it one clock reading. When the timer fires it looks at the time
of the last read; if the deadline has moved it sleeps again, and if it has
passed it cancels the task doing the exchange, which leaves the ``with``
block as :class:`UpstreamTimeout`. So the total timeout fires however fast
the upstream streams.

A timer that wakes early only sleeps again, so a deadline that moves later
costs nothing; the one that can move earlier is the switch from the
first-byte clock to the idle clock at the first event (the idle deadline is
usually well before the first-byte one), and there the timer is set anew.
Else the idle timeout would wait for the first-byte deadline to pass first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from sse_adapter.errors import UpstreamTimeout
from sse_adapter.settings import Settings

__all__ = ["Deadlines", "Watch"]


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
    """Times one upstream exchange against its deadlines.

    ``with watch:`` around the exchange arms the timer for the current task;
    ``received`` is called for every read. While ``paused`` is true (the relay
    is blocked writing to a slow client, so it reads nothing), silence is not
    the upstream's fault and only the total timeout can fire.
    """

    def __init__(
        self, settings: Settings, url: str, started: float, tap: Callable[[bytes], None] | None = None
    ) -> None:
        self.deadlines = Deadlines.of(settings, started)
        self.url = url
        self.last_read = started
        self.streaming = False  # the first event has come: the idle clock runs
        self.paused = False
        self.expired: UpstreamTimeout | None = None
        self._tap = tap  # --trace-dir's recorder of the upstream's bytes
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def received(self, data: bytes, event: bool) -> None:
        """Bytes came from the upstream: any byte resets the idle clock."""
        self.last_read = self._loop.time()
        if event and not self.streaming:
            self._streams()
        if self._tap is not None:
            self._tap(data)

    def _streams(self) -> None:
        """The first event: the idle clock takes over from the first-byte one, from now."""
        self.streaming = True
        if self._timer is not None:  # armed for the first-byte deadline, most often the later one
            self._timer.cancel()
            self._arm()

    def __enter__(self) -> Watch:
        self._task = asyncio.current_task()
        self._arm()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc_type is asyncio.CancelledError and self.expired is not None:
            if self._task is not None:
                self._task.uncancel()
            raise self.expired from None

    def _arm(self) -> None:
        at, _ = self.deadlines.next(self.last_read, self.streaming)
        self._timer = self._loop.call_at(at, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self.paused:
            self.last_read = now  # blocked on the client, not waiting on the upstream
        at, why = self.deadlines.next(self.last_read, self.streaming)
        if now < at:
            self._timer = self._loop.call_at(at, self._check)
            return
        self._timer = None
        self.expired = UpstreamTimeout(f"the model server {why}; check that it is not stuck", self.url)
        if self._task is not None:
            self._task.cancel()
