"""One stream, from the upstream's bytes to the client's frames, and its clock.

A stream is tasks writing whole frames to one channel: the pump (read,
decode, repair, encode; one write per upstream read) and the keep-alive,
which writes a heartbeat whenever the client side has been idle for an
interval. The channel carries whole frames, so the two never interleave
inside one; the keep-alive is stopped before the last frames are written, so
nothing follows ``[DONE]``. On shutdown the stream gets a grace period to
finish; past it, it ends with an in-band error, between two frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import anyio
import httpx
from anyio.abc import ObjectSendStream

from sse_adapter.chunks import error_chunk
from sse_adapter.encoder import DONE, frame
from sse_adapter.errors import AdapterError, InternalError, ShuttingDown
from sse_adapter.observe import RequestStats
from sse_adapter.reading import is_event_stream, refusal, repaired
from sse_adapter.repair import StreamRepairer
from sse_adapter.timeouts import Watch

__all__ = ["StreamRelay"]

log = logging.getLogger(__name__)


class StreamRelay:
    """Relays one upstream stream; ``run`` is the whole life of it."""

    def __init__(
        self,
        opening: asyncio.Future[httpx.Response],
        watch: Watch,
        repairer: StreamRepairer,
        *,
        heartbeat: Callable[[], bytes] | None,
        interval: float,
        max_event_bytes: int,
        shutdown_grace: float,
        stats: RequestStats,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self._opening = opening
        self._watch = watch
        self._repairer = repairer
        self._heartbeat = heartbeat
        self._interval = interval
        self._max_event_bytes = max_event_bytes
        self._shutdown_grace = shutdown_grace
        self._on_close = on_close
        self._stats = stats
        self._last_write = watch.deadlines.started  # the client has waited since its request came in
        self._pumping = anyio.CancelScope()
        self._closed = False
        self.shutdown = anyio.Event()  # set by the response when the server stops

    async def run(self, out: ObjectSendStream[bytes]) -> None:
        try:
            async with out:
                async with anyio.create_task_group() as helpers:
                    if self._heartbeat is not None:
                        helpers.start_soon(self._keep_alive, out, self._heartbeat)
                    helpers.start_soon(self._stop_on_shutdown)
                    last = await self._relay(out)
                    helpers.cancel_scope.cancel()
                await out.send(last + DONE)
        finally:
            await self.close()

    async def close(self) -> None:
        """Release the upstream, so no generation goes on for nobody. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._on_close()
        with anyio.move_on_after(5, shield=True):
            self._opening.cancel()  # once: repeated cancels would cut httpx's own clean-up short
            await asyncio.wait({self._opening})  # unlike await, never cancels what it waits on
            if self._opening.cancelled() or self._opening.exception() is not None:
                return  # it never opened: nothing to close
            await self._opening.result().aclose()

    async def _keep_alive(self, out: ObjectSendStream[bytes], heartbeat: Callable[[], bytes]) -> None:
        # One timer per stream: it wakes once per interval at most, and sends
        # only when nothing else was written since.
        while True:
            await anyio.sleep_until(self._last_write + self._interval)
            if anyio.current_time() >= self._last_write + self._interval:
                await self._write(out, heartbeat())
                self._stats.heartbeats += 1

    async def _stop_on_shutdown(self) -> None:
        await self.shutdown.wait()
        await anyio.sleep(self._shutdown_grace)
        self._pumping.cancel()

    async def _write(self, out: ObjectSendStream[bytes], frames: bytes) -> None:
        await out.send(frames)
        self._last_write = asyncio.get_running_loop().time()  # the same clock as anyio's, without its lookup

    async def _relay(self, out: ObjectSendStream[bytes]) -> bytes:
        """Everything up to the last frames, which it returns: the held-back
        text and the usage, or an error."""
        repairer = self._repairer
        try:
            with self._pumping:
                await self._pump(out)
            if self._pumping.cancelled_caught:
                raise ShuttingDown(
                    "sse-adapter is shutting down and the stream outlasted --shutdown-grace; "
                    "the answer is incomplete: send the request again"
                )
            if not repairer.finished:
                repairer.repairs["missing_done"] += 1
            return self._counted(repairer.finish())
        except AdapterError as error:
            log.warning("stream %s ended in error: %s", repairer.identity.id or "(no id yet)", error.message)
            self._stats.outcome = error.code
            return self._counted(repairer.finish(failed=True)) + frame(error_chunk(repairer.identity, error))
        except Exception:
            log.exception("stream %s failed inside sse-adapter", repairer.identity.id or "(no id yet)")
            failure = InternalError("sse-adapter failed on this stream; see its log")
            self._stats.outcome = failure.code
            return frame(error_chunk(repairer.identity, failure))
        finally:
            self._stats.repairs.update(repairer.repairs)

    def _counted(self, payloads: list[bytes]) -> bytes:
        self._stats.events += len(payloads)
        return _frames(payloads)

    async def _pump(self, out: ObjectSendStream[bytes]) -> None:
        # Shielded: a cancelled pump must not cancel the opening too, again and
        # again; close() cancels it once, and closes what it opened.
        response = await self._watch.timed(asyncio.shield(self._opening))
        self._stats.upstream_status = response.status_code
        if not is_event_stream(response):
            error = await refusal(response, self._watch)
            error.message = (
                f"the upstream answered {response.status_code}: {error.message}"  # the 200 is gone
            )
            raise error
        reads = repaired(response, self._repairer, self._watch, self._max_event_bytes)
        async with contextlib.aclosing(reads):
            async for payloads in reads:
                if self._stats.first_event is None:
                    self._stats.first_event = (
                        asyncio.get_running_loop().time() - self._watch.deadlines.started
                    )
                await self._write(out, self._counted(payloads))


def _frames(payloads: list[bytes]) -> bytes:
    return b"".join(map(frame, payloads))
