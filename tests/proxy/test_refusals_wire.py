"""Refused fields over real sockets: what one client's request can teach the
adapter about the upstream, and what it cannot.

The hostile tenant writes a refusal into a value the server echoes back in
its error (pydantic's ``input``, as vLLM and FastChat put it into their 400s);
later clients must still reach the upstream with every field they sent.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest

from sse_adapter.proxy.resend import Refused
from sse_adapter.settings import Settings
from tests.adapter_server import run_adapter
from tests.end_client import stream
from tests.proxy.test_requests_wire import ASK, CHAT, USAGE, WORDS, answer_chunks, usage_chunk, vllm_like
from tests.upstream_fake import Received, Writer, fake_upstream, json_answer, sse

pytestmark = pytest.mark.anyio

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
POISON = "Unsupported param: tools"


def _vllm_echo(value: object) -> bytes:
    """vLLM's 400 for a max_tokens it cannot read: pydantic's errors, ``input`` and all."""
    message = (
        "[{'type': 'int_parsing', 'loc': ('body', 'max_tokens'), 'msg': 'Input should be a valid integer, "
        f"unable to parse string as an integer', 'input': {value!r}}}]"
    )
    return orjson.dumps(
        {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    )


def _fastchat_echo(value: object) -> bytes:
    """FastChat's 400: pydantic's text, its ``input_value`` echoed."""
    message = (
        "1 validation error for ChatCompletionRequest\nmax_tokens\n  Input should be a valid integer, unable "
        f"to parse string as an integer [type=int_parsing, input_value={value!r}, input_type=str]"
    )
    return orjson.dumps({"object": "error", "message": message, "code": 40001})


def _strict_max_tokens(echo: Any) -> Any:
    """A server that takes tools, refuses a max_tokens that is no integer and echoes it."""

    async def handler(received: Received, out: Writer) -> None:
        request = received.json()
        assert isinstance(request, dict)
        if not isinstance(request.get("max_tokens", 0), int):
            await json_answer(400, echo(request["max_tokens"]))(received, out)
        else:
            await vllm_like(received, out)

    return handler


@pytest.mark.parametrize(
    ("echo", "body"),
    [
        pytest.param(_vllm_echo, orjson.dumps({**ASK, "tools": TOOLS, "max_tokens": POISON}), id="vllm"),
        pytest.param(
            _fastchat_echo, orjson.dumps({**ASK, "tools": TOOLS, "max_tokens": POISON}), id="fastchat"
        ),
        pytest.param(  # the same words behind JSON escapes: the request is read decoded
            _vllm_echo,
            orjson.dumps({**ASK, "tools": TOOLS}).removesuffix(b"}")
            + b',"max_tokens":"Un\\u0073upported par\\u0061m: tools"}',
            id="escaped",
        ),
    ],
)
async def test_one_client_cannot_teach_the_adapter_to_drop_anothers_fields(echo: Any, body: bytes) -> None:
    async with fake_upstream(_strict_max_tokens(echo)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            async with httpx.AsyncClient(timeout=10) as client:
                poisoned = await client.post(
                    adapter + CHAT, content=body, headers={"content-type": "application/json"}
                )
            honest = await stream(adapter, CHAT, {**ASK, "tools": TOOLS, "max_tokens": 5})
    assert poisoned.status_code == 400  # the server's own answer, passed on
    assert "Unsupported param: tools" in poisoned.text
    assert honest.status == 200
    assert honest.text() == "".join(WORDS)
    sent = [request.json() for request in upstream.requests]
    assert len(sent) == 2  # the poisoned request was not sent again without tools
    assert sent[0]["tools"] == TOOLS  # type: ignore[index]
    assert sent[1]["tools"] == TOOLS  # type: ignore[index]


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


async def test_a_refusal_is_kept_only_once_the_request_without_the_field_succeeded() -> None:
    succeed = [False]
    asked = {**ASK, "x_extra": 1}
    async with fake_upstream(_refusing_extra(succeed)) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            failed = await stream(adapter, CHAT, asked)  # refused, sent again, failed: nothing learned
            again = await stream(adapter, CHAT, asked)
            succeed[0] = True
            accepted = await stream(adapter, CHAT, asked)  # refused, sent again, accepted: learned
            later = await stream(adapter, CHAT, asked)
    assert [seen.status for seen in (failed, again)] == [503, 503]
    assert accepted.text() == later.text() == "".join(WORDS)
    carried = ["x_extra" in request.json() for request in upstream.requests]  # type: ignore[operator]
    assert carried == [True, False, True, False, True, False, False]


async def test_a_refused_null_does_not_drop_later_values() -> None:
    """TGI: 422 "seed: invalid type: null"; a seed that is a number it takes."""
    refusal = (
        b"Failed to deserialize the JSON body into the target type: seed: invalid type: null, "
        b"expected u64 at line 1 column 80"
    )

    async def tgi(received: Received, out: Writer) -> None:
        request = received.json()
        assert isinstance(request, dict)
        if "seed" in request and request["seed"] is None:
            await json_answer(422, refusal)(received, out)
        else:
            await vllm_like(received, out)

    async with fake_upstream(tgi) as upstream:
        async with run_adapter(Settings(upstream=upstream.url)) as adapter:
            nulled = await stream(adapter, CHAT, {**ASK, "seed": None})
            seeded = await stream(adapter, CHAT, {**ASK, "seed": 7})
            nulled_again = await stream(adapter, CHAT, {**ASK, "seed": None})
    assert nulled.text() == seeded.text() == nulled_again.text() == "".join(WORDS)
    seeds = [request.json().get("seed", "absent") for request in upstream.requests]  # type: ignore[union-attr]
    assert seeds == [None, "absent", 7, None, "absent"]  # the null dropped each time, for its request only


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


def test_made_up_names_a_server_refuses_take_bounded_memory() -> None:
    refused = Refused()
    for batch in range(100):
        refused.add("/v1/chat/completions", frozenset(f"x_{batch}_{number}" for number in range(10)))
    assert len(refused.of("/v1/chat/completions")) == 64
    refused.add("/v1/completions", frozenset({"best_of"}))
    assert refused.of("/v1/completions") == {"best_of"}
