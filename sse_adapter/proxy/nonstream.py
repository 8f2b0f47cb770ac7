"""Non-streaming requests: the whole answer, normalised, and kept alive while it comes.

Keep-alive (shared/keepalive.md): only once the upstream has been silent for
one interval is the 200 committed; then a space goes out each interval until
the body is ready. Leading whitespace is valid JSON, and One-API, Go's and
Python's parsers accept it. An error after the 200 is an OpenAI error body
with a non-empty ``error.type``, which One-API reads as an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from sse_adapter.errors import AdapterError, InternalError, UpstreamReported
from sse_adapter.ops.observe import RequestStats
from sse_adapter.proxy.reading import is_event_stream, read_body, refusal
from sse_adapter.proxy.resend import Exchange
from sse_adapter.proxy.timeouts import Watch
from sse_adapter.proxy.upstream import map_errors
from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.completion import Assembler, normalise_completion
from sse_adapter.repair.dialects import body_error, excerpt
from sse_adapter.repair.fitting import serialised
from sse_adapter.repair.pipeline import Pipeline
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.settings import Settings

__all__ = ["Answer", "complete", "keepalive_body"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    media_type: str = "application/json"


async def complete(exchange: Exchange, kind: Kind, settings: Settings, stats: RequestStats) -> Answer:
    """The normalised non-stream answer; an upstream failure raises our error."""
    watch = Watch(settings, exchange.url, asyncio.get_running_loop().time(), stats.tap)
    alias = exchange.outgoing.model if exchange.outgoing.aliased else None
    if settings.nonstream_via_stream:
        with watch:
            return Answer(200, await _assembled(exchange, kind, settings, watch, stats, alias))
    with watch:
        response = await exchange.open(stats.repairs)
        stats.answered(response.status_code, response.headers.multi_items())
        try:
            if not response.is_success:
                raise await refusal(response, watch)
            body = await read_body(response, watch, settings.max_event_bytes)
        finally:
            await response.aclose()
    content_type = response.headers.get("content-type", "")
    error = body_error(response.status_code, content_type, body, response.headers.get("server", ""))
    if error is not None:
        raise error
    parsed = _json(body, response.status_code)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("choices"), list):
        return Answer(response.status_code, body, content_type or "application/json")  # not ours to repair
    outgoing = exchange.outgoing
    opened = outgoing.opens_think()
    normalised = normalise_completion(
        parsed, kind, settings, int(time.time()), stats.repairs, alias, outgoing.offers_tools, opened
    )
    return Answer(response.status_code, serialised(normalised))


async def _assembled(
    exchange: Exchange, kind: Kind, settings: Settings, watch: Watch, stats: RequestStats, alias: str | None
) -> bytes:
    """Ask for a stream and build the answer from it, so failures show as they happen."""
    response = await _as_stream(exchange).open(stats.repairs)
    stats.answered(response.status_code, response.headers.multi_items())
    try:
        if not is_event_stream(response):
            raise await refusal(response, watch)
        identity = StreamIdentity(kind, "", int(time.time()))
        outgoing = exchange.outgoing
        repairer = StreamRepairer(
            identity,
            settings,
            alias=alias,
            offers_tools=outgoing.offers_tools,
            think_opened=outgoing.opens_think(),
        )
        pipeline = Pipeline(repairer, settings.max_event_bytes)
        assembler = Assembler(kind)
        with map_errors(watch.url):
            async for raw in response.aiter_bytes():
                payloads, event, failure = pipeline.feed(raw)
                watch.received(raw, event)
                assembler.add_all(payloads)
                if failure is not None:
                    raise failure
                if pipeline.finished:
                    break
        if not pipeline.finished:
            payloads, failure = pipeline.flush()
            assembler.add_all(payloads)
            if failure is not None:
                raise failure
        assembler.add_all(pipeline.finish())
        return serialised(assembler.result())
    finally:
        await response.aclose()


def _json(body: bytes, status: int) -> object:
    """The body's JSON; invalid UTF-8 is replaced, as the stream decoder does."""
    try:
        return orjson.loads(body.decode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        raise UpstreamReported(
            f"the upstream answered {status} with a body that is not JSON: {excerpt(body)!r}"
        ) from None


def _as_stream(exchange: Exchange) -> Exchange:
    """The same request, asking for a stream with its usage."""
    asked = exchange.outgoing.with_fields(stream=True, stream_options={"include_usage": True})
    outgoing = replace(asked, stream=True)
    return replace(exchange, request=exchange.request.with_body(outgoing.body), outgoing=outgoing)


async def keepalive_body(
    answer: asyncio.Task[Answer], interval: float, render: Callable[[AdapterError], dict[str, Any]]
) -> AsyncIterator[bytes]:
    """A space each interval until the answer is ready, then the answer; the
    200 is already out, so an error is a body ``render`` shapes for the route."""
    try:
        while not answer.done():
            yield b" "
            await asyncio.wait({answer}, timeout=interval)
        yield _late_body(answer, render)
    finally:
        answer.cancel()  # the client left: stop the upstream's work too


def _late_body(answer: asyncio.Task[Answer], render: Callable[[AdapterError], dict[str, Any]]) -> bytes:
    try:
        result = answer.result()
    except AdapterError as error:
        log.warning("non-stream answer failed after the 200: %s (%s)", error.message, error.detail or "-")
        return orjson.dumps(render(error))
    except Exception:
        log.exception("non-stream answer failed inside sse-adapter")
        return orjson.dumps(render(InternalError("sse-adapter failed on this request; see its log")))
    return result.body
