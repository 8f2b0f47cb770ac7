"""Where a route's usage comes from, for ``sse-adapter probe``: the server's
own count, one the adapter counted (exactly, or approximately), or none.

The route's small stream request is run through the adapter's own app, in
this process, against the probed server: what the answer carries is what a
gateway in front of the adapter would bill. Whether the adapter counted it
is read from the app's own ``/metrics`` (the ``usage_counted`` repair), and
how exactly from the tokenizer it found (:func:`exactness`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from sse_adapter.proxy.app import create_app
from sse_adapter.proxy.tokens import TokenCounter, Tokenizer
from sse_adapter.proxy.upstream import Upstream
from sse_adapter.repair.format import Format
from sse_adapter.settings import Settings
from sse_adapter.sse.decoder import SSEDecoder
from sse_adapter.tools.agentclient import PATHS

__all__ = ["exactness", "usage_source"]

_TIMEOUT = httpx.Timeout(10.0, read=600.0)  # a reasoning model may think for minutes
_PROMPT = [{"role": "user", "content": "Say hello in five words."}]
# Tokenizers that apply the server's chat template to the request and to the answer's turn
# (both as the server renders them); any other is approximate.
# TGI renders the prompt but cannot render an answer's turn back: its completion is the
# visible text and the stop token, approximate too (README, Billing).
_TEMPLATE_AWARE = frozenset({"VLLM", "LLAMA_CPP"})


def exactness(tokenizer: Tokenizer) -> str:
    """``exact`` for a tokenizer that counts the prompt as the server renders it, else ``approximate``."""
    return "exact" if tokenizer.name in _TEMPLATE_AWARE else "approximate"


async def usage_source(url: str, model: str, api_key: str | None, form: Format, body: dict[str, Any]) -> str:
    """``server's``, ``counted (exact)``, ``counted (approximate)`` or ``none``, for
    ``body`` (the route's request, streamed) sent through the adapter to ``url``."""
    settings = Settings(upstream=url, upstream_api_key=api_key)
    app = create_app(settings)
    route = PATHS.get(form, "/v1/chat/completions")
    headers = {"anthropic-version": "2023-06-01"} if form is Format.MESSAGES else {}
    with _quiet():
        answer, page = await _through(app, route, {**body, "stream": True}, headers)
    if answer.status_code != 200 or not _carries_usage(answer.content, form):
        return "none"
    if not _counted(page, form):
        return "server's"
    with _quiet():
        async with Upstream(settings) as upstream:
            tokenizer = await TokenCounter(upstream).tokenizer(model)
    return f"counted ({exactness(tokenizer)})" if tokenizer is not None else "counted"


async def _through(
    app: Any, route: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[httpx.Response, str]:
    """The answer of the adapter's app to ``body``, and its ``/metrics`` page after it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)  # the probe's stream is short: buffered whole is fine
        async with httpx.AsyncClient(
            transport=transport, base_url="http://adapter", timeout=_TIMEOUT
        ) as client:
            answer = await client.post(route, json=body, headers=headers)
            return answer, (await client.get("/metrics")).text


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The in-process adapter's own log lines (its access line, a tokenizer it did
    not find) are no part of the probe's report: only its errors are shown."""
    logger = logging.getLogger("sse_adapter")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def chat_request(model: str) -> dict[str, Any]:
    return {"model": model, "messages": _PROMPT, "max_tokens": 32}


def _carries_usage(raw: bytes, form: Format) -> bool:
    """Whether the stream the client got has a usage with a count in it."""
    decoder = SSEDecoder()
    for event in decoder.feed(raw) + decoder.flush():
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(event.data)
            if isinstance(body, dict) and _has_count(_usage_of(body, form)):
                return True
    return False


def _usage_of(body: dict[str, Any], form: Format) -> object:
    if form is Format.RESPONSES:
        response = body.get("response")
        return response.get("usage") if isinstance(response, dict) else None
    if form is Format.MESSAGES and body.get("type") != "message_delta":
        return None  # message_start's usage has no output count yet
    return body.get("usage")


def _has_count(usage: object) -> bool:
    return isinstance(usage, dict) and any(
        isinstance(count, int) and count > 0
        for name in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
        if (count := usage.get(name)) is not None
    )


def _counted(page: str, form: Format) -> bool:
    """The app's /metrics say it counted a usage on the route."""
    route = f'route="{form.value}"'
    return any(
        line.startswith("sse_adapter_repairs_total{")
        and 'kind="usage_counted"' in line
        and route in line
        and not line.endswith(" 0.0")
        for line in page.splitlines()
    )
