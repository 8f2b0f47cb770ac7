"""One stream, from the upstream's bytes to the client's frames, and its clocks.

A stream is one task of its own: it opens the upstream, then for each
upstream read decodes, repairs and makes one ASGI send of the frames the
read completes. Nothing else runs per event; three things wait beside it:

- the heartbeat timer, re-armed lazily from the time of the last write. When
  the client has been sent nothing for an interval, a heartbeat goes out from
  a short task of its own. The two writers take turns (``_writing``), so
  frames never interleave and nothing follows the last frame;
- the watch's deadline timer (:mod:`sse_adapter.proxy.timeouts`), which cancels the
  stream's task with an upstream timeout;
- one waiter on ``receive()``, which cancels the stream's task when the client
  leaves, so the upstream request is closed and the model stops generating.

Until something is written the status is open: an upstream that fails fast
keeps its real status. The first heartbeat commits a 200; after that an
error goes in-band. On shutdown uvicorn cancels the request once its graceful
timeout (``--shutdown-grace``) has passed, and the stream ends with an
in-band ``shutting_down`` error in its format's shape, between two frames.

A slow client slows the upstream: the stream's send waits on uvicorn's flow
control, so the stream stops reading, and aiohttp stops reading the socket
once its buffer is full. Nothing is queued in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, cast

import httpx
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from sse_adapter.errors import AdapterError, InternalError, ShuttingDown, UpstreamReported
from sse_adapter.ops.observe import WIRE, RequestStats, request_id
from sse_adapter.proxy.reading import is_event_stream, refusal
from sse_adapter.proxy.resend import Exchange
from sse_adapter.proxy.timeouts import Watch
from sse_adapter.proxy.upstream import map_errors
from sse_adapter.repair.pipeline import Pipeline
from sse_adapter.repair.turns import Turns
from sse_adapter.settings import Settings

__all__ = ["EventStream"]

log = logging.getLogger(__name__)

# Counting a stream's usage, all its tokenizer calls together (a stuck tokenizer
# must not hold a complete answer back for long).
_COUNT_WITHIN = 15.0

_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each frame on at once
]


class EventStream(Response):
    """The ASGI response of one streaming request; calling it is the stream's whole life.

    A plain ASGI response, not sse-starlette's: its cancel scope per send and
    its task group cost more per event than the whole relay may (see README,
    Performance), and the frames are made here already.
    """

    # Slots, not a __dict__: past 30 attributes CPython 3.11 stops sharing an
    # instance dict's keys, and every attribute read on the per-event path slows.
    __slots__ = (
        "_answered",
        "_beat_task",
        "_beat_timer",
        "_client_gone",
        "_committed",
        "_count_usage",
        "_ended",
        "_exchange",
        "_format",
        "_heartbeat",
        "_heartbeat_mode",
        "_hold",
        "_interval",
        "_last_write",
        "_loop",
        "_on_close",
        "_pipeline",
        "_refusal",
        "_request_id",
        "_response",
        "_send",
        "_settings",
        "_shutting_down",
        "_stats",
        "_tail",
        "_watch",
        "_wire",
        "_writing",
    )

    _send: Send
    _loop: asyncio.AbstractEventLoop
    _watch: Watch

    def __init__(
        self,
        exchange: Exchange,
        pipeline: Pipeline,
        settings: Settings,
        stats: RequestStats,
        *,
        heartbeat: Callable[[], bytes] | None,
        heartbeat_mode: str,
        count_usage: Callable[[Turns], Awaitable[dict[str, Any] | None]] | None = None,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.status_code = 200  # what the route hands FastAPI; the real status is sent by __call__
        self.background = None
        self._exchange = exchange
        self._count_usage = count_usage
        self._pipeline = pipeline
        self._settings = settings
        self._stats = stats
        self._heartbeat = heartbeat
        self._heartbeat_mode = heartbeat_mode
        self._format = pipeline.repairer
        self._interval = settings.heartbeat_interval
        self._hold = settings.hold
        self._on_close = on_close
        self._last_write = stats.started  # the client has waited since its request came in
        self._committed = False  # the 200 has gone out
        self._writing = False  # a send is under way, the stream's or a heartbeat's
        self._ended = False  # the last frames are due: no more heartbeats, no more cancels
        self._client_gone = False
        self._shutting_down = False
        self._beat_timer: asyncio.TimerHandle | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._response: httpx.Response | None = None
        self._refusal: AdapterError | None = None
        self._tail: list[bytes] = []  # the payloads that end a clean stream
        self._answered = False  # the upstream's whole answer came: what remains is counting it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the stream in a task of its own, and wait for it.

        Its own task, not the request's: every resumption of a task runs down
        its whole stack of awaits, and the request's is some twenty middleware
        and routing frames deep, a toll each event would pay.
        """
        self._send = send
        self._wire: Send = scope.get(WIRE, send)  # past the middlewares, for the frames
        self._request_id = request_id(scope)
        self._loop = loop = asyncio.get_running_loop()
        self._watch = Watch(self._settings, self._exchange.url, self._stats.started, self._stats.tap)
        if self._heartbeat is not None:
            self._beat_timer = loop.call_at(self._last_write + self._hold, self._beat_due)
        stream = loop.create_task(self._life())
        waiter = loop.create_task(self._wait_for_leave(receive, stream))
        try:
            await asyncio.wait({stream})  # unlike await, never cancels what it waits on
        except asyncio.CancelledError:  # uvicorn ends what outlasts its graceful shutdown
            self._shutting_down = True
            stream.cancel()
            await asyncio.wait({stream})
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            waiter.cancel()
        stream.result()  # a failure of the relay itself is uvicorn's to log

    async def _life(self) -> None:
        try:
            await self._finish(await self._stream())
        finally:
            self._stop_heartbeats()
            if self._beat_task is not None:
                self._beat_task.cancel()  # a no-op once it is done
            if self._response is not None:
                await self._response.aclose()
            self._stats.repairs.update(self._pipeline.repairs)
            self._stats.usage = self._format.usage
            self._on_close()

    async def _stream(self) -> AdapterError | None:
        """Everything up to the last frames; the error that ended it, if one did."""
        try:
            with self._watch:
                self._response = response = await self._exchange.open(
                    self._stats.repairs, lambda: not self._committed
                )
                self._stats.answered(response.status_code, response.headers.multi_items())
                if not is_event_stream(response):
                    self._refusal = await refusal(response, self._watch)
                    return self._refusal
                await self._write(None)  # commit the 200: the upstream streams
                await self._relay(response)
            self._pipeline.check_end()  # an answer cut short is not worth counting
            self._answered = True
            # Counting waits on the tokenizer, not the upstream: its own bound, not the upstream's clocks.
            self._tail = self._pipeline.finish(usage=await self._counted_usage())
        except AdapterError as error:
            return error
        except asyncio.CancelledError:
            if not (self._client_gone or self._shutting_down):
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if self._client_gone:
                return None
            if self._answered:  # the whole answer came: it ends well, only without its count
                return self._finish_uncounted()
            return ShuttingDown(
                "sse-adapter is shutting down and the stream outlasted --shutdown-grace; "
                "the answer is incomplete: send the request again"
            )
        except Exception:
            log.exception("stream %s failed inside sse-adapter", self._format.stream_id or "(no id yet)")
            return InternalError("sse-adapter failed on this stream; see its log")
        return None

    async def _relay(self, response: httpx.Response) -> None:
        pipeline, watch, stats = self._pipeline, self._watch, self._stats
        # The transport's stream itself, as read: aiter_raw would add a generator
        # per read only to count bytes. aiter_bytes undoes a Content-Encoding.
        reads: AsyncIterable[bytes] = (
            response.aiter_bytes()
            if "content-encoding" in response.headers
            else cast(httpx.AsyncByteStream, response.stream)  # an async transport's
        )
        repairer, encode = pipeline.repairer, self._format.encode
        with map_errors(watch.url):
            async for raw in reads:
                payloads, event, failure = pipeline.feed(raw)
                watch.received(raw, event)
                if payloads:
                    if stats.first_event is None:
                        stats.first_event = self._loop.time() - stats.started
                    stats.events += len(payloads)
                    await self._write(encode(payloads))
                if failure is not None:
                    raise failure
                if repairer.finished:
                    return
        payloads, failure = pipeline.flush()
        if payloads:
            await self._write(self._counted(payloads))
        if failure is not None:
            raise failure

    async def _counted_usage(self) -> dict[str, Any] | None:
        """The usage the upstream did not send, counted with its tokenizer where it can be,
        within ``_COUNT_WITHIN`` seconds in all: past that the stream ends without it."""
        repairer = self._pipeline.repairer
        if repairer.saw_usage or self._count_usage is None:
            return None
        self._stats.without_usage = True
        if repairer.turns is None:  # nothing kept: the upstream sent usage before, and this once it did not
            return None
        try:
            async with asyncio.timeout(_COUNT_WITHIN):
                usage = await self._count_usage(repairer.turns)
        except TimeoutError:
            log.info("the upstream's tokenizer did not count this stream within %g s", _COUNT_WITHIN)
            return None
        self._stats.without_usage = usage is None
        return usage

    def _finish_uncounted(self) -> AdapterError | None:
        """The last frames of a whole answer whose count was cut short (by the drain)."""
        self._stats.without_usage = True
        try:
            self._tail = self._pipeline.finish()
        except AdapterError as error:
            return error
        return None

    async def _finish(self, error: AdapterError | None) -> None:
        """The last frames (chat: and ``[DONE]``); or, when nothing was sent yet, the error's own answer."""
        self._ended = True
        self._stop_heartbeats()
        if self._writing and self._beat_task is not None:
            await asyncio.wait({self._beat_task})  # a heartbeat on its way out goes first
        if self._client_gone:
            return
        if error is None:
            await self._write(self._counted(self._tail) + self._format.closing(), last=True)
            return
        self._stats.outcome = error.code
        if not self._committed:
            if error.detail:
                log.warning("request %s failed: %s (%s)", self._request_id, error.message, error.detail)
            await self._answer_error(error)
            return
        if error is self._refusal and isinstance(error, UpstreamReported):  # the 200 is gone: say the status
            error.message = f"the upstream answered {self._stats.upstream_status}: {error.message}"
        log.warning(
            "request %s: stream %s ended in error: %s%s",
            self._request_id,
            self._format.stream_id or "(no id yet)",
            error.message,
            f" ({error.detail})" if error.detail else "",
        )
        held = [] if isinstance(error, InternalError) else self._pipeline.finish(failed=True)
        await self._write(self._counted(held) + self._format.failure(error), last=True)

    async def _write(self, body: bytes | None, last: bool = False) -> None:
        """The stream task's one way to the client: ``None`` commits the 200 only."""
        if self._writing and self._beat_task is not None:
            await asyncio.wait({self._beat_task})  # never cancels the heartbeat it waits for
        self._writing = self._watch.paused = True
        try:
            if not self._committed:
                await self._start()
            if body is not None:
                await self._wire(self._body(body, last))
        finally:
            self._writing = self._watch.paused = False
        if body is not None:  # a status line alone never reaches the client behind One-API
            self._last_write = self._loop.time()
        elif self._beat_timer is not None:  # committed early: the next beat is an interval out, not the hold
            self._beat_timer.cancel()
            self._beat_timer = self._loop.call_at(self._last_write + self._interval, self._beat_due)

    def _body(self, body: bytes, last: bool = False) -> Message:
        if self._stats.trace is not None:  # the frames pass no middleware that would record them
            self._stats.trace.to_client(body)
        return {"type": "http.response.body", "body": body, "more_body": not last}

    async def _start(self) -> None:
        self._committed = True
        self._stats.heartbeat_mode = self._heartbeat_mode
        await self._send({"type": "http.response.start", "status": 200, "headers": _HEADERS})

    async def _answer_error(self, error: AdapterError) -> None:
        body = self._format.error_body(error)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        start: Message = {"type": "http.response.start", "status": error.http_status, "headers": headers}
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body})

    def _counted(self, payloads: list[bytes]) -> bytes:
        self._stats.events += len(payloads)
        return self._format.encode(payloads)

    def _beat_due(self) -> None:
        self._beat_timer = None
        if self._ended:
            return
        now = self._loop.time()
        due = self._last_write + (self._interval if self._committed else self._hold)
        if self._writing:  # frames are on their way out: the client is not idle
            due = now + self._interval
        if now < due:
            self._beat_timer = self._loop.call_at(due, self._beat_due)
            return
        self._writing = True
        assert self._heartbeat is not None
        # Made now, not in the task: a format that numbers its events (Responses)
        # numbers the heartbeat before any event the stream task repairs next.
        self._beat_task = self._loop.create_task(self._beat(self._heartbeat()))

    async def _beat(self, heartbeat: bytes) -> None:
        try:
            if not self._committed:
                await self._start()
            await self._wire(self._body(heartbeat))
            self._stats.heartbeats += 1
        finally:
            self._writing = False
            self._last_write = self._loop.time()
        if not self._ended:
            self._beat_timer = self._loop.call_at(self._last_write + self._interval, self._beat_due)

    def _stop_heartbeats(self) -> None:
        if self._beat_timer is not None:
            self._beat_timer.cancel()
            self._beat_timer = None

    async def _wait_for_leave(self, receive: Receive, task: asyncio.Task[object]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self._ended:
            self._client_gone = True
            task.cancel()
