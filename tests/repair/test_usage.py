"""Issue 25: the server's own count first, wherever it puts it, and a placeholder is no count (pure)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import orjson
import pytest

from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.completion import Assembler, normalise_completion
from sse_adapter.repair.messages import MessagesRepairer
from sse_adapter.repair.responses import ResponsesRepairer
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.repair.usage import (
    RESPONSES_NAMES,
    Verdict,
    generated_text,
    timings_usage,
    usage_verdict,
)
from sse_adapter.settings import Settings
from sse_adapter.sse.decoder import Event, SSEDecoder
from tests.end_client import fixture

USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def usage(prompt: int | None, completion: int | None, total: int | None) -> dict[str, Any]:
    counts = zip(
        ("prompt_tokens", "completion_tokens", "total_tokens"), (prompt, completion, total), strict=True
    )
    return {name: count for name, count in counts if count is not None}


@pytest.mark.parametrize(
    ("found", "generated", "verdict"),
    [
        pytest.param(None, None, Verdict.EMPTY, id="null"),
        pytest.param(usage(0, 0, 0), True, Verdict.EMPTY, id="all-zeros"),
        pytest.param(usage(12, 3, 15), True, Verdict.REAL, id="real"),
        pytest.param(usage(12, 3, None), True, Verdict.REAL, id="no-total-is-filled-not-wrong"),
        pytest.param(usage(0, 3, 3), True, Verdict.PLACEHOLDER, id="no-prompt-tokens"),
        pytest.param(usage(None, 3, 3), True, Verdict.PLACEHOLDER, id="prompt-missing"),
        pytest.param(usage(12, 0, 12), True, Verdict.PLACEHOLDER, id="no-completion-tokens-for-text"),
        pytest.param(usage(12, None, 12), False, Verdict.PLACEHOLDER, id="completion-missing"),
        pytest.param(usage(12, 3, 99), True, Verdict.PLACEHOLDER, id="total-not-the-sum"),
        pytest.param(usage(12, 3, 0), True, Verdict.PLACEHOLDER, id="total-zero"),
        # an answer with nothing in it: zero completion tokens is the server's count
        pytest.param(usage(12, 0, 12), False, Verdict.REAL, id="empty-answer"),
        # text not kept (the route's streams carry usage): the server is believed
        pytest.param(usage(12, 0, 12), None, Verdict.REAL, id="text-not-known"),
        pytest.param({"prompt_tokens": True, "completion_tokens": 1}, True, Verdict.PLACEHOLDER, id="bool"),
    ],
)
def test_what_a_usage_is(found: object, generated: bool | None, verdict: Verdict) -> None:
    assert usage_verdict(found, lambda: generated) is verdict


def test_text_is_asked_about_only_for_zero_completion_tokens() -> None:
    def never() -> bool:
        raise AssertionError("asked")

    assert usage_verdict(USAGE, never) is Verdict.REAL


def test_responses_names() -> None:
    assert usage_verdict(
        {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}, names=RESPONSES_NAMES
    ) is (Verdict.REAL)
    assert (
        usage_verdict({"input_tokens": 0, "output_tokens": 2}, names=RESPONSES_NAMES) is Verdict.PLACEHOLDER
    )


def recorded_timings(name: str) -> dict[str, Any]:
    found = re.search(rb'"timings":(\{[^}]*\})', fixture(name))
    assert found is not None
    timings: dict[str, Any] = orjson.loads(found.group(1))
    return timings


def test_llama_servers_timings_count_the_cached_prompt_too() -> None:
    # Recorded live: usage says 66 input tokens, 65 of them cached; timings say prompt_n 1, cache_n 65.
    timings = recorded_timings("live/llamacpp-responses-queued.sse")
    assert timings_usage(timings) == {
        "prompt_tokens": 66,
        "completion_tokens": 16,
        "total_tokens": 82,
        "prompt_tokens_details": {"cached_tokens": 65},
    }
    assert b'"input_tokens":66,"output_tokens":16' in fixture("live/llamacpp-responses-queued.sse")


@pytest.mark.parametrize(
    "timings",
    [None, {}, {"prompt_n": 0, "predicted_n": 0}, {"prompt_n": 3}, {"prompt_n": "3", "predicted_n": 1}],
)
def test_timings_without_counts_are_no_usage(timings: object) -> None:
    assert timings_usage(timings) is None


def test_generated_text_in_deltas_messages_and_completions() -> None:
    assert not generated_text({"choices": [{"delta": {"content": ""}}, {"delta": {}}]})
    assert generated_text({"choices": [{"delta": {"reasoning": "hm"}}]})
    assert generated_text({"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]})
    assert generated_text({"choices": [{"message": {"content": "hi"}}]})
    assert generated_text({"choices": [{"text": "hi"}]})


# -- the chat stream ---------------------------------------------------------------------------


def repairer(**options: Any) -> StreamRepairer:
    return StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://x"), **options)


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **fields: Any) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}
    return orjson.dumps({**body, **fields}).decode()


def run(fix: StreamRepairer, *events: str, counted: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    payloads = [payload for data in events for payload in fix.repair(Event(data))]
    return [orjson.loads(payload) for payload in payloads + fix.finish(usage=counted)]


def usages(chunks: list[dict[str, Any]]) -> list[Any]:
    return [chunk["usage"] for chunk in chunks if "usage" in chunk]


@pytest.mark.parametrize(
    "placeholder",
    [usage(0, 2, 2), usage(12, 0, 12), usage(12, 2, 40)],
    ids=["no-prompt", "no-completion-for-text", "total-not-sum"],
)
def test_a_placeholder_is_counted_and_never_sent(placeholder: dict[str, Any]) -> None:
    fix = repairer(collect_text=True)
    events = [chunk({"content": "Hi"}), chunk({}, "stop"), chunk(None, usage=placeholder)]
    before = [fix.repair(Event(data)) for data in events]
    assert not fix.saw_usage  # so the relay counts it
    assert fix.repairs["usage_placeholder"] == 1
    out = [orjson.loads(p) for p in [*before[0], *before[1], *before[2], *fix.finish(usage=USAGE)]]
    assert usages(out) == [USAGE]
    assert fix.repairs["usage_counted"] == 1


def test_a_placeholder_uncounted_leaves_the_stream_without_usage() -> None:
    out = run(
        repairer(collect_text=True), chunk({"content": "Hi"}, "stop"), chunk(None, usage=usage(12, 0, 12))
    )
    assert usages(out) == []  # One-API counts itself: nearer the truth than the placeholder


def test_an_empty_answers_usage_is_the_servers() -> None:
    # max_tokens reached before any text (or an immediate stop): zero completion tokens is the count
    empty = usage(12, 0, 12)
    fix = repairer(collect_text=True)
    out = run(fix, chunk({"role": "assistant", "content": ""}), chunk({}, "length"), chunk(None, usage=empty))
    assert fix.saw_usage
    assert usages(out) == [empty]
    assert not fix.repairs["usage_placeholder"]


def test_text_in_the_usage_chunk_itself_counts_as_generated() -> None:
    fix = repairer(collect_text=True)
    run(fix, chunk({"content": "Hi"}, "stop", usage=usage(12, 0, 12)))
    assert not fix.saw_usage


def test_a_missing_total_is_filled_in() -> None:
    fix = repairer()
    out = run(fix, chunk({"content": "Hi"}, "stop"), chunk(None, usage=usage(12, 3, None)))
    assert usages(out) == [USAGE]
    assert fix.repairs["usage_total_filled"] == 1


TIMINGS = {"prompt_n": 2, "cache_n": 10, "predicted_n": 3, "predicted_ms": 40.1}


def test_timings_on_the_finish_chunk_are_the_usage_when_there_is_none() -> None:
    # llama-server not sending usage: its timings ride on the finish chunk (../shared/live/README.md)
    fix = repairer(usage_on_last_choice=True)
    out = run(fix, chunk({"content": "Hi"}), chunk({}, "stop", timings=TIMINGS))
    assert fix.saw_usage
    last = out[-1]
    assert last["timings"] == TIMINGS  # kept where the server put it
    assert last["usage"] == {**USAGE, "prompt_tokens_details": {"cached_tokens": 10}}
    assert fix.repairs["usage_from_timings"] == 1


def test_a_real_usage_wins_over_timings() -> None:
    fix = repairer()
    out = run(fix, chunk({}, "stop", timings=TIMINGS), chunk(None, usage=usage(99, 1, 100), timings=TIMINGS))
    assert usages(out) == [usage(99, 1, 100)]


def test_timings_are_no_usage_when_nobody_asked_for_one() -> None:
    fix = repairer(usage_asked=False)
    out = run(fix, chunk({"content": "Hi"}), chunk({}, "stop", timings=TIMINGS))
    assert usages(out) == []
    assert out[-1]["timings"] == TIMINGS


def test_a_placeholder_next_to_timings_gives_way_to_them() -> None:
    fix = repairer(collect_text=True)
    out = run(fix, chunk({"content": "Hi"}, "stop"), chunk(None, usage=usage(0, 0, 3), timings=TIMINGS))
    assert fix.saw_usage
    assert usages(out)[0]["prompt_tokens"] == 12


DETAILED = {
    **USAGE,
    "completion_tokens_details": {"reasoning_tokens": 2},
    "prompt_tokens_details": {"cached_tokens": 4},
}


@pytest.mark.parametrize("ride", [True, False], ids=["on-last-chunk", "usage-only-chunk"])
def test_reasoning_tokens_are_carried_wherever_the_usage_goes(ride: bool) -> None:
    fix = repairer(usage_on_last_choice=ride)
    out = run(fix, chunk({"reasoning": "hm"}), chunk({"content": "Hi"}, "stop"), chunk(None, usage=DETAILED))
    assert usages(out) == [DETAILED]
    assert bool(out[-1]["choices"]) is ride


def test_a_hidden_usage_is_read_and_never_sent() -> None:
    fix = repairer(hide_usage=True, usage_on_last_choice=True)
    out = run(fix, chunk({"content": "Hi"}, "stop"), chunk(None, usage=DETAILED))
    assert usages(out) == []
    assert all(c["choices"] for c in out)  # no usage-only chunk either
    assert (fix.saw_usage, fix.usage) == (True, DETAILED)


# -- non-stream bodies -------------------------------------------------------------------------


def body(message: dict[str, Any], **fields: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice], **fields}


def normalised(answer: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    repairs: Counter[str] = Counter()
    out = normalise_completion(answer, Kind.CHAT, Settings(upstream="http://x"), 1, repairs)
    return out["usage"], dict(repairs)


def test_a_body_with_a_placeholder_says_zeros_and_one_api_counts() -> None:
    found, repairs = normalised(body({"content": "Hi"}, usage=usage(12, 0, 12)))
    assert found == usage(0, 0, 0)
    assert repairs == {"usage_placeholder": 1}


def test_a_bodys_timings_are_its_usage_when_it_has_none() -> None:
    found, repairs = normalised(body({"content": "Hi"}, timings=TIMINGS))
    assert found == {**USAGE, "prompt_tokens_details": {"cached_tokens": 10}}
    assert repairs == {"usage_from_timings": 1}


def test_a_bodys_real_usage_is_kept_whole() -> None:
    found, repairs = normalised(body({"content": "Hi"}, usage=DETAILED, timings=TIMINGS))
    assert (found, repairs) == (DETAILED, {})


def test_an_assembled_answer_drops_a_placeholder_its_text_shows() -> None:
    assembler = Assembler(Kind.CHAT)
    assembler.add(orjson.loads(chunk({"content": "Hi"}, "stop")))
    assembler.add(orjson.loads(chunk(None, usage=usage(12, 0, 12))))
    assert assembler.result()["usage"] == usage(0, 0, 0)


# -- Responses and Messages ---------------------------------------------------------------------

COUNTED = {
    "prompt_tokens": 26,
    "completion_tokens": 18,
    "total_tokens": 44,
    "completion_tokens_details": {"reasoning_tokens": 5},
    "prompt_tokens_details": {"cached_tokens": 2},
}


def recorded(name: str, change: Any = None) -> list[Event]:
    """A live recording's events; ``change`` edits each event's JSON."""
    found = SSEDecoder(1 << 24).feed(fixture(name))
    if change is None:
        return found
    edited = []
    for event in found:
        body = orjson.loads(event.data)
        change(body)
        edited.append(Event(orjson.dumps(body).decode(), event.event))
    return edited


def typed_bodies(units: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(event.data) for event in SSEDecoder(1 << 24).feed(b"".join(units))]


def responses_usage(body: dict[str, Any], **usage: Any) -> None:
    if body.get("type") == "response.completed":
        body["response"]["usage"] = usage


def test_a_responses_stream_with_the_servers_count_is_its_own() -> None:
    repairer = ResponsesRepairer("m", 65000)
    [repairer.repair(event) for event in recorded("live/vllm-responses-text.sse")]
    assert repairer.saw_usage
    assert repairer.finish() == []  # nothing held


@pytest.mark.parametrize(
    "placeholder",
    [
        {"input_tokens": 0, "output_tokens": 18, "total_tokens": 18},
        {"input_tokens": 26, "output_tokens": 0, "total_tokens": 26},  # the output has text
        {"input_tokens": 26, "output_tokens": 18, "total_tokens": 4},
    ],
    ids=["no-input", "no-output-for-text", "total-not-sum"],
)
def test_a_responses_placeholder_is_counted_with_its_details(placeholder: dict[str, Any]) -> None:
    repairer = ResponsesRepairer("m", 65000)
    events = recorded("live/vllm-responses-text.sse", lambda body: responses_usage(body, **placeholder))
    [repairer.repair(event) for event in events]
    assert not repairer.saw_usage
    assert repairer.repairs["usage_placeholder"] == 1
    [completed] = typed_bodies(repairer.finish(usage=COUNTED))
    assert completed["response"]["usage"] == {
        "input_tokens": 26,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 18,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 44,
    }


def test_a_responses_placeholder_not_counted_is_sent_as_none() -> None:
    repairer = ResponsesRepairer("m", 65000)
    events = recorded(
        "live/vllm-responses-text.sse", lambda body: responses_usage(body, input_tokens=0, output_tokens=18)
    )
    [repairer.repair(event) for event in events]
    [completed] = typed_bodies(repairer.finish())
    assert completed["response"]["usage"] is None


def test_an_empty_responses_answers_zero_output_is_the_servers() -> None:
    def empty(body: dict[str, Any]) -> None:
        if body.get("type") == "response.completed":
            body["response"]["output"] = [
                {"type": "message", "content": [{"type": "output_text", "text": ""}]}
            ]
            body["response"]["usage"] = {"input_tokens": 26, "output_tokens": 0, "total_tokens": 26}

    repairer = ResponsesRepairer("m", 65000)
    [repairer.repair(event) for event in recorded("live/vllm-responses-text.sse", empty)]
    assert repairer.saw_usage


def test_a_messages_stream_counts_its_cached_prompt_as_prompt() -> None:
    # Recorded live: llama-server says input_tokens 1 and cache_read_input_tokens 65
    repairer = MessagesRepairer(65000)
    [repairer.repair(event) for event in recorded("live/llamacpp-messages-text-cached.sse")]
    assert repairer.saw_usage
    assert not repairer.repairs["usage_placeholder"]


def no_input(body: dict[str, Any]) -> None:
    if body.get("type") == "message_start":
        body["message"]["usage"] = {"input_tokens": 0, "output_tokens": 0}
    if body.get("type") == "message_delta":  # vLLM says its input here too: as llama-server, it does not
        body["usage"] = {"output_tokens": 18}


def test_a_messages_placeholder_input_is_counted_and_the_servers_output_kept() -> None:
    repairer = MessagesRepairer(65000)
    [repairer.repair(event) for event in recorded("live/vllm-messages-text.sse", no_input)]
    assert not repairer.saw_usage
    assert repairer.repairs["usage_placeholder"] == 1
    delta = next(
        body for body in typed_bodies(repairer.finish(usage=COUNTED)) if body["type"] == "message_delta"
    )
    assert delta["usage"] == {"input_tokens": 26, "output_tokens": 18}  # 18: the server's own, kept


def zero_output(body: dict[str, Any]) -> None:
    if body.get("type") == "message_delta":
        body["usage"] = {"output_tokens": 0}


@pytest.mark.parametrize(
    ("text_kept", "real"), [(True, False), (False, False)], ids=["text-kept", "text-not-kept"]
)
def test_a_messages_zero_output_for_text_is_counted(text_kept: bool, real: bool) -> None:
    repairer = MessagesRepairer(65000, collect_text=text_kept)
    [repairer.repair(event) for event in recorded("live/vllm-messages-text.sse", zero_output)]
    assert repairer.saw_usage is real
    assert repairer.repairs["usage_placeholder"] == int(text_kept)


def test_a_messages_empty_answers_zero_output_is_the_servers() -> None:
    def empty(body: dict[str, Any]) -> None:
        zero_output(body)
        if body.get("type") == "content_block_delta":
            body["delta"]["text"] = ""

    repairer = MessagesRepairer(65000, collect_text=True)
    [repairer.repair(event) for event in recorded("live/vllm-messages-text.sse", empty)]
    assert repairer.saw_usage
