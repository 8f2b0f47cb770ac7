"""One stream, from the upstream's bytes to the client's frames, and its clock.

A stream is two tasks writing whole frames to one channel: the pump (read,
decode, repair, encode; one write per upstream read) and the keep-alive,
which writes a heartbeat whenever the client side has been idle for an
interval. The channel carries whole frames, so the two never interleave
inside one; the keep-alive is stopped before the last frames are written, so
nothing follows ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

import anyio
import httpx
from anyio.abc import ObjectSendStream

from sse_adapter.chunks import error_chunk
from sse_adapter.decoder import Event, SSEDecoder
from sse_adapter.dialects import body_error
from sse_adapter.encoder import DONE, frame
from sse_adapter.errors import AdapterError, EventTooLarge, InternalError, UpstreamReported
from sse_adapter.repair import StreamRepairer
from sse_adapter.upstream import map_errors

__all__ = ["StreamRelay", "is_event_stream", "read_body", "refusal", "repaired"]

log = logging.getLogger(__name__)

_FIELD_EVENTS = frozenset({"error"})  # llama.cpp before Sep 2025: a bare `error: {...}` line


def is_event_stream(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    return response.is_success and content_type.split(";")[0].strip().lower() == "text/event-stream"


async def read_body(response: httpx.Response, url: str, limit: int) -> bytes:
    """A whole response body, or its first ``limit`` bytes: no runaway body is buffered."""
    body = bytearray()
    with map_errors(url):
        async for part in response.aiter_bytes():
            body += part
            if len(body) >= limit:
                break
    return bytes(body[:limit])


async def refusal(response: httpx.Response, url: str, limit: int) -> UpstreamReported:
    """The error an upstream answer that is no event stream stands for."""
    content_type = response.headers.get("content-type", "no content type")
    body = await read_body(response, url, limit)
    error = body_error(response.status_code, content_type, body)
    if error is None:
        return UpstreamReported(
            f"the upstream answered {response.status_code} with {content_type} instead of an event stream; "
            "check that --upstream is the server's OpenAI-compatible endpoint (for Ollama, its /v1 API)",
            status=response.status_code,
        )
    return error


class StreamRelay:
    """Relays one upstream stream; ``run`` is the whole life of it."""

    def __init__(
        self,
        opening: asyncio.Future[httpx.Response],
        url: str,
        repairer: StreamRepairer,
        *,
        heartbeat: Callable[[], bytes] | None,
        interval: float,
        max_event_bytes: int,
        max_body_bytes: int,
        started: float,
    ) -> None:
        self._opening = opening
        self._url = url
        self._repairer = repairer
        self._heartbeat = heartbeat
        self._interval = interval
        self._max_event_bytes = max_event_bytes
        self._max_body_bytes = max_body_bytes
        self._last_write = started  # the client has waited since its request came in
        self.heartbeats = 0

    async def run(self, out: ObjectSendStream[bytes]) -> None:
        try:
            async with out:
                async with anyio.create_task_group() as keep_alive:
                    if self._heartbeat is not None:
                        keep_alive.start_soon(self._keep_alive, out, self._heartbeat)
                    last = await self._relay(out)
                    keep_alive.cancel_scope.cancel()
                await out.send(last + DONE)
        finally:
            await self.close()

    async def close(self) -> None:
        """Release the upstream, so no generation goes on for nobody. Idempotent."""
        with anyio.move_on_after(5, shield=True):
            self._opening.cancel()
            try:
                response = await self._opening
            except (asyncio.CancelledError, Exception):
                return  # it never opened: nothing to close
            await response.aclose()

    async def _keep_alive(self, out: ObjectSendStream[bytes], heartbeat: Callable[[], bytes]) -> None:
        # One timer per stream: it wakes once per interval at most, and sends
        # only when nothing else was written since.
        while True:
            await anyio.sleep_until(self._last_write + self._interval)
            if anyio.current_time() >= self._last_write + self._interval:
                await self._write(out, heartbeat())
                self.heartbeats += 1

    async def _write(self, out: ObjectSendStream[bytes], frames: bytes) -> None:
        await out.send(frames)
        self._last_write = anyio.current_time()

    async def _relay(self, out: ObjectSendStream[bytes]) -> bytes:
        """Everything up to the last frames, which it returns: the held-back
        text and the usage, or an error."""
        repairer = self._repairer
        try:
            await self._pump(out)
            return _frames(repairer.finish())
        except AdapterError as error:
            log.warning("stream %s ended in error: %s", repairer.identity.id or "(no id yet)", error.message)
            return _frames(repairer.finish(failed=True)) + frame(error_chunk(repairer.identity, error))
        except Exception:
            log.exception("stream %s failed inside sse-adapter", repairer.identity.id or "(no id yet)")
            failure = InternalError("sse-adapter failed on this stream; see its log")
            return frame(error_chunk(repairer.identity, failure))

    async def _pump(self, out: ObjectSendStream[bytes]) -> None:
        response = await self._opening
        if not is_event_stream(response):
            error = await refusal(response, self._url, self._max_body_bytes)
            error.message = (
                f"the upstream answered {response.status_code}: {error.message}"  # the 200 is gone
            )
            raise error
        reads = repaired(response, self._repairer, self._url, self._max_event_bytes)
        async with contextlib.aclosing(reads):
            async for payloads in reads:
                await self._write(out, _frames(payloads))


async def repaired(
    response: httpx.Response, repairer: StreamRepairer, url: str, max_event_bytes: int
) -> AsyncGenerator[list[bytes], None]:
    """The repaired payloads of each upstream read, up to the upstream's [DONE].

    All of one read come at once, for one write. A failure inside a read is
    raised after the payloads that came before it: nothing before it is lost.
    """
    decoder = SSEDecoder(max_event_bytes, field_events=_FIELD_EVENTS)
    with map_errors(url):
        async for raw in response.aiter_bytes():
            failure: AdapterError | None = None
            try:
                events = decoder.feed(raw)
            except EventTooLarge as too_large:
                events, failure = too_large.completed, too_large
            payloads, failure = _repair_all(repairer, events, failure)
            if payloads:
                yield payloads
            if failure is not None:
                raise failure
            if repairer.finished:
                return
    payloads, failure = _repair_all(repairer, decoder.flush(), None)
    if payloads:
        yield payloads
    if failure is not None:
        raise failure


def _repair_all(
    repairer: StreamRepairer, events: list[Event], failure: AdapterError | None
) -> tuple[list[bytes], AdapterError | None]:
    payloads: list[bytes] = []
    for event in events:
        try:
            payloads += repairer.repair(event)
        except AdapterError as error:
            return payloads, error
        if repairer.finished:
            break
    return payloads, failure


def _frames(payloads: list[bytes]) -> bytes:
    return b"".join(map(frame, payloads))
