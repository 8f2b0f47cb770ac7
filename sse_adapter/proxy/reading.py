"""Reading an upstream's answer that is no stream: whole bodies and refusals,
every read reported to the exchange's :class:`~sse_adapter.proxy.timeouts.Watch`."""

from __future__ import annotations

import httpx

from sse_adapter.errors import AdapterError, NotAnEventStream, ResponseTooLarge
from sse_adapter.proxy.timeouts import Watch
from sse_adapter.proxy.upstream import ERROR_BODY_LIMIT, map_errors
from sse_adapter.repair.dialects import body_error

__all__ = ["is_event_stream", "read_body", "refusal"]


def is_event_stream(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    return response.is_success and content_type.split(";")[0].strip().lower() == "text/event-stream"


async def read_body(response: httpx.Response, watch: Watch, limit: int, *, truncate: bool = False) -> bytes:
    """A whole response body. Past ``limit`` bytes it is an error, or with
    ``truncate`` (for error bodies, read only for their message) cut there."""
    body = bytearray()
    with map_errors(watch.url):
        async for chunk in response.aiter_bytes():
            body += chunk
            watch.received(chunk, event=True)
            if len(body) > limit:
                if truncate:
                    return bytes(body[:limit])
                raise ResponseTooLarge(
                    f"the model server answered with more than {limit} bytes; "
                    "raise --max-event-bytes if its answers really are that large",
                    watch.url,
                )
    return bytes(body)


async def refusal(response: httpx.Response, watch: Watch) -> AdapterError:
    """The error an upstream answer that is no event stream stands for."""
    content_type = response.headers.get("content-type", "no content type")
    body = await read_body(response, watch, ERROR_BODY_LIMIT, truncate=True)
    error = body_error(response.status_code, content_type, body, response.headers.get("server", ""))
    if error is None:
        return NotAnEventStream(
            f"the upstream answered {response.status_code} with {content_type} instead of an event stream; "
            "check that --upstream is the server's OpenAI-compatible endpoint (for Ollama, its /v1 API)"
        )
    return error
