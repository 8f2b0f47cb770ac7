"""Reading an upstream's answer: whole bodies, refusals, and repaired stream
payloads, every wait timed by the exchange's :class:`~sse_adapter.timeouts.Watch`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import httpx

from sse_adapter.decoder import Event, SSEDecoder
from sse_adapter.dialects import body_error
from sse_adapter.errors import AdapterError, EventTooLarge, ResponseTooLarge, UpstreamReported
from sse_adapter.repair import StreamRepairer
from sse_adapter.timeouts import Watch
from sse_adapter.upstream import map_errors

__all__ = ["is_event_stream", "read_body", "refusal", "repaired"]

_FIELD_EVENTS = frozenset({"error"})  # llama.cpp before Sep 2025: a bare `error: {...}` line
_ERROR_BODY_LIMIT = 64 * 1024  # enough for any error message
_PREFETCH_LIMIT = 1024 * 1024  # read ahead of a slow client by this much at most


def is_event_stream(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    return response.is_success and content_type.split(";")[0].strip().lower() == "text/event-stream"


async def read_body(response: httpx.Response, watch: Watch, limit: int, *, truncate: bool = False) -> bytes:
    """A whole response body. Past ``limit`` bytes it is an error, or with
    ``truncate`` (for error bodies, read only for their message) cut there."""
    body = bytearray()
    chunks = response.aiter_bytes()
    with map_errors(watch.url):
        while True:
            try:
                chunk = await watch.timed(anext(chunks))
            except StopAsyncIteration:
                return bytes(body)
            body += chunk
            watch.received(chunk, event=True)
            if len(body) > limit:
                if truncate:
                    return bytes(body[:limit])
                raise ResponseTooLarge(
                    f"the upstream at {watch.url} answered with more than {limit} bytes; "
                    "raise --max-event-bytes if its answers really are that large"
                )


async def refusal(response: httpx.Response, watch: Watch) -> UpstreamReported:
    """The error an upstream answer that is no event stream stands for."""
    content_type = response.headers.get("content-type", "no content type")
    body = await read_body(response, watch, _ERROR_BODY_LIMIT, truncate=True)
    error = body_error(response.status_code, content_type, body)
    if error is None:
        return UpstreamReported(
            f"the upstream answered {response.status_code} with {content_type} instead of an event stream; "
            "check that --upstream is the server's OpenAI-compatible endpoint (for Ollama, its /v1 API)",
            status=response.status_code,
        )
    return error


class Prefetch:
    """Reads the upstream ahead of the pump, in a task of its own.

    httpx yields one HTTP chunk at a time, and servers send one event per
    chunk; handing each on alone costs far more than the event itself (the
    profile: timers, channel and ASGI sends). So everything that arrived
    while the last batch was being written is taken at once. The buffer is
    bounded: a slow client slows the reads, nothing piles up.
    """

    def __init__(self, chunks: AsyncIterator[bytes], limit: int) -> None:
        self._chunks = chunks
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._ended = False
        self._failure: BaseException | None = None
        self._task = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        try:
            async for chunk in self._chunks:
                self._parts.append(chunk)
                self._size += len(chunk)
                self._arrived.set()
                if self._size >= self._limit:
                    self._room.clear()
                    await self._room.wait()
        except Exception as failure:  # handed to the pump, which raises it
            self._failure = failure
        finally:
            self._ended = True
            self._arrived.set()

    async def take(self) -> bytes | None:
        """All that has arrived since the last take; None once the body has ended."""
        await self._arrived.wait()
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._room.set()
            if not self._ended:
                self._arrived.clear()
            return data
        if self._failure is not None:
            raise self._failure
        return None

    def close(self) -> None:
        self._task.cancel()  # once; httpx cleans up after itself


async def repaired(
    response: httpx.Response, repairer: StreamRepairer, watch: Watch, max_event_bytes: int
) -> AsyncGenerator[list[bytes], None]:
    """The repaired payloads of each batch of upstream reads, up to the upstream's [DONE].

    All of one batch come at once, for one write. A failure inside a batch
    is raised after the payloads that came before it: nothing before it is
    lost. Any byte, a comment included, resets the idle clock.
    """
    decoder = SSEDecoder(max_event_bytes, field_events=_FIELD_EVENTS)
    reads = Prefetch(response.aiter_bytes(), limit=_PREFETCH_LIMIT)
    try:
        with map_errors(watch.url):
            while not repairer.finished and (raw := await watch.timed(reads.take())) is not None:
                failure: AdapterError | None = None
                try:
                    events = decoder.feed(raw)
                except EventTooLarge as too_large:
                    events, failure = too_large.completed, too_large
                watch.received(raw, event=bool(events))
                payloads, failure = _repair_all(repairer, events, failure)
                if payloads:
                    yield payloads
                if failure is not None:
                    raise failure
    finally:
        reads.close()
        repairer.repairs.update(+decoder.quirks)
    if not repairer.finished:
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
