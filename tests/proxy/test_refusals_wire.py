"""Refused fields over real sockets: what one client's request can teach the
adapter about the upstream, and what it cannot.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import stream
from tests.proxy.test_requests_wire import ASK, USAGE, WORDS, answer_chunks, usage_chunk, vllm_like
from tests.upstream_fake import Received, Writer, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio


def _refusing_extra(resends_succeed: list[bool]) -> Any:
    """transformers serve's refusal of ``x_extra``; without it, an answer that
    succeeds or fails as ``resends_succeed[0]`` says."""
    refusal = orjson.dumps({"detail": "Unexpected fields in the request: {'x_extra'}"})
    overloaded = orjson.dumps({"error": {"message": "overloaded", "type": "server_error", "code": 503}})

    async def handler(received: Received, out: Writer) -> None:
        request = received.json()
        assert isinstance(request, dict)
        if "x_extra" in request:
            await json_answer(422, refusal)(received, out)
        elif resends_succeed[0]:
            await vllm_like(received, out)
        else:
            await json_answer(503, overloaded)(received, out)

    return handler


SPELLINGS = [
    "/v1/chat/completions",
    "/v1/chat/%63ompletions",
    "/v1/%63hat/%63ompletions",
    "/v1/chat%2Fcompletions",
]


async def test_what_is_learned_of_a_path_holds_for_every_spelling_of_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_adapter.proxy.resend")
    async with fake_upstream(_refusing_extra([True])) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            seen = [await stream(adapter, path, {**ASK, "x_extra": 1}) for path in SPELLINGS]
    assert all(each.text() == "".join(WORDS) for each in seen)
    assert upstream.requests[-1].target == SPELLINGS[-1]  # forwarded as sent: only the key is decoded
    carried = ["x_extra" in request.json() for request in upstream.requests]  # type: ignore[operator]
    assert carried == [True, False, False, False, False]  # learned once, for the route
    warnings = [record for record in caplog.records if "sent without them from now on" in record.getMessage()]
    assert len(warnings) == 1


async def test_a_route_that_sent_usage_is_known_by_any_spelling() -> None:
    """Usage seen on one spelling: a stream on another without usage keeps no text to count."""
    searches: list[str] = []
    streams: list[int] = []

    async def usage_once(received: Received, out: Writer) -> None:
        if received.target in SPELLINGS:
            streams.append(1)
            pieces = answer_chunks() + ([usage_chunk()] if len(streams) == 1 else [])
            await sse([*pieces, b"data: [DONE]\n\n"])(received, out)
        else:
            if received.target not in ("/health", "/v1/models"):  # not the readiness check
                searches.append(received.target)
            await json_answer(404, b"{}")(received, out)

    async with fake_upstream(usage_once, handles_probes=True) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            first = await stream(adapter, SPELLINGS[0], ASK)
            second = await stream(adapter, SPELLINGS[1], ASK)
    assert first.usage() == USAGE
    assert second.usage() is None
    assert searches == []  # no tokenizer looked for: the route sends its usage
    assert len(upstream.requests) == 2
