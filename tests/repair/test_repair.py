"""One stream's repairs, each with its switch, and line fitting (pure)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from sse_adapter.errors import InternalError, LineTooLong, UpstreamError, UpstreamReported
from sse_adapter.repair.chunks import Kind, StreamIdentity, heartbeat_chunk
from sse_adapter.repair.completion import normalise_completion
from sse_adapter.repair.fitting import fit
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.settings import ReasoningField, Settings, Tags
from sse_adapter.sse.decoder import Event


def repairer(kind: Kind = Kind.CHAT, **settings: Any) -> StreamRepairer:
    return StreamRepairer(
        StreamIdentity(kind, "req-model", 1700000000), Settings(upstream="http://x", **settings)
    )


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **fields: Any) -> str:
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        **fields,
    }
    return orjson.dumps(body).decode()


def run(fix: StreamRepairer, *events: str) -> list[dict[str, Any]]:
    payloads = [p for data in events for p in fix.repair(Event(data))] + fix.finish()
    return [orjson.loads(payload) for payload in payloads]


def test_a_chunk_needing_no_repair_goes_out_byte_for_byte() -> None:
    data = '{"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}'  # noqa: E501
    assert repairer().repair(Event(data)) == [data.encode()]


def test_an_empty_id_becomes_one_generated_id_for_the_whole_stream() -> None:
    fix = repairer()
    first, second = run(fix, chunk(id=""), chunk(id=""))
    assert first["id"] == second["id"]
    assert first["id"].startswith("chatcmpl-")


def test_a_heartbeat_before_the_first_chunk_fixes_the_id() -> None:
    fix = repairer(Kind.COMPLETION)
    beat = orjson.loads(heartbeat_chunk(fix.identity))
    assert beat["id"].startswith("cmpl-")
    [out] = run(
        fix, '{"id":"cmpl-up","object":"text_completion","created":1,"choices":[{"index":0,"text":"a"}]}'
    )
    assert out["id"] == beat["id"]


def test_a_multi_line_payload_is_put_on_one_line() -> None:
    fix = repairer()
    [out] = fix.repair(Event(chunk().replace(",", ",\n")))
    assert b"\n" not in out
    assert fix.repairs["multi_line_payload"] == 1


@pytest.mark.parametrize(
    ("reason", "out"),
    [
        ("stop_sequence", "stop"),
        ("eos_token", "stop"),
        ("", "stop"),
        ("abort", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        (None, None),
    ],
)
def test_finish_reasons_are_openais(reason: str | None, out: str | None) -> None:
    [got] = run(repairer(), chunk(finish=reason))
    assert got["choices"][0]["finish_reason"] == out


def test_finish_reasons_can_be_kept() -> None:
    [got] = run(repairer(map_finish_reason=False), chunk(finish="eos_token"))
    assert got["choices"][0]["finish_reason"] == "eos_token"


def test_missing_object_created_and_finish_reason_are_filled() -> None:
    [got] = run(repairer(), '{"id":"c1","model":"vicuna","choices":[{"index":0,"delta":{"content":"a"}}]}')
    assert (got["object"], got["created"], got["choices"][0]["finish_reason"]) == (
        "chat.completion.chunk",
        1700000000,
        None,
    )


def test_filling_can_be_switched_off() -> None:
    [got] = run(repairer(fill_fields=False), '{"id":"c1","choices":[{"index":0,"delta":{"content":"a"}}]}')
    assert "object" not in got
    assert "finish_reason" not in got["choices"][0]


@pytest.mark.parametrize(
    ("field", "delta", "expected"),
    [
        ("reasoning_content", {"reasoning": "r"}, {"reasoning_content": "r"}),
        ("reasoning_content", {"reasoning_content": "r"}, {"reasoning_content": "r"}),
        ("reasoning_content", {"reasoning": "r", "reasoning_content": "r"}, {"reasoning_content": "r"}),
        ("reasoning", {"reasoning_content": "r"}, {"reasoning": "r"}),
        ("keep", {"reasoning": "r"}, {"reasoning": "r"}),
        ("keep", {"reasoning_content": "r"}, {"reasoning_content": "r"}),
    ],
)
def test_reasoning_goes_under_one_name(field: str, delta: dict[str, str], expected: dict[str, str]) -> None:
    [got] = run(repairer(reasoning_field=field), chunk(delta))
    assert got["choices"][0]["delta"] == expected


BOTH = {"reasoning_content": "r", "reasoning": "r"}


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        pytest.param({"reasoning": "r"}, BOTH, id="vllm"),
        pytest.param({"reasoning_content": "r"}, BOTH, id="llama-server"),
        pytest.param({"reasoning_content": None, "reasoning": "r"}, BOTH, id="one-null"),
        pytest.param(BOTH, BOTH, id="both-already"),
        pytest.param({"content": "a"}, {"content": "a"}, id="no-reasoning"),
    ],
)
def test_both_puts_reasoning_under_both_names(delta: dict[str, str], expected: dict[str, str]) -> None:
    [got] = run(repairer(reasoning_field="both"), chunk(delta))
    assert got["choices"][0]["delta"] == expected


def test_both_puts_think_tags_split_out_under_both_names_in_a_stream_and_a_body() -> None:
    chunks = run(
        repairer(reasoning_field="both", think_tags="split"), chunk({"content": "<think>r</think>a<thi"})
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [{**BOTH, "content": "a"}, {"content": "<thi"}]
    chunks = run(repairer(reasoning_field="both", think_tags="split"), chunk({"content": "<think>r</th"}))
    held = chunks[-1]["choices"][0]["delta"]  # held back, then flushed at the end: reasoning after all
    assert (held["reasoning_content"], held["reasoning"]) == ("</th", "</th")
    message = {"role": "assistant", "content": "<think>r</think>a"}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    settings = Settings("http://x", reasoning_field=ReasoningField.BOTH, think_tags=Tags.SPLIT)
    normalised = normalise_completion(body, Kind.CHAT, settings, 1)
    assert normalised["choices"][0]["message"] == {"role": "assistant", "content": "a", **BOTH}
    body["choices"][0]["message"] = {"role": "assistant", "content": "a", "reasoning": "r"}
    normalised = normalise_completion(body, Kind.CHAT, settings, 1)
    assert normalised["choices"][0]["message"] == {"role": "assistant", "content": "a", **BOTH}


def think_stream(*pieces: str, **settings: Any) -> tuple[str, str]:
    events = [chunk({"content": piece}) for piece in pieces] + [chunk({}, finish="stop")]
    chunks = run(repairer(think_tags="split", **settings), *events)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    return (
        "".join(d.get("reasoning_content") or "" for d in deltas),
        "".join(d.get("content") or "" for d in deltas),
    )


def test_think_tags_split_across_chunks_move_to_reasoning() -> None:
    text = "<think>Let me see.</think>The answer."
    for cut in range(len(text) + 1):
        assert think_stream(text[:cut], text[cut:]) == ("Let me see.", "The answer."), cut


def deltas_of(fix: StreamRepairer, *events: str) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in run(fix, *events) if c["choices"]]


def test_a_stream_opened_in_the_prompt_puts_the_text_before_its_close_in_reasoning() -> None:
    """Item 14: the stream starts inside the thought and has only ``</think>``."""
    text = "Let me see.</think>The answer."
    for cut in range(len(text) + 1):
        assert think_stream(text[:cut], text[cut:]) == ("Let me see.", "The answer."), cut
    fix = StreamRepairer(
        StreamIdentity(Kind.CHAT, "m", 1), Settings("http://x", think_tags=Tags.SPLIT), think_opened=True
    )
    long_thought = "x" * 5000  # past any hold: the request said thinking was on
    first, *_ = deltas_of(
        fix, chunk({"content": long_thought}), chunk({"content": "</think>a"}), chunk({}, "stop")
    )
    assert first == {"content": "", "reasoning_content": long_thought}  # at once, not held


def test_an_answer_with_no_thought_streams_once_past_the_hold() -> None:
    pieces = [chunk({"content": "y" * 100}) for _ in range(5)]
    got = [d.get("content") for d in deltas_of(repairer(think_tags="split"), *pieces)]
    assert got == ["", "", "y" * 300, "y" * 100, "y" * 100]


def test_content_after_the_servers_own_reasoning_is_the_answer_whatever_the_prompt_opened() -> None:
    settings = Settings("http://x", think_tags=Tags.SPLIT)
    for opened in (None, True):
        fix = StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), settings, think_opened=opened)
        events = [chunk({"reasoning_content": "hm"}), chunk({"content": "Hi"}), chunk({}, "stop")]
        assert deltas_of(fix, *events)[:2] == [{"reasoning_content": "hm"}, {"content": "Hi"}], opened


def test_think_tags_are_kept_by_default() -> None:
    [got] = run(repairer(), chunk({"content": "<think>x</think>y"}))
    assert got["choices"][0]["delta"]["content"] == "<think>x</think>y"


def test_held_back_text_comes_out_when_the_stream_ends_without_a_finish() -> None:
    chunks = run(repairer(think_tags="split"), chunk({"content": "ends in <thi"}))
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "ends in <thi"


def test_null_or_zero_usage_is_dropped_and_the_last_real_usage_goes_last() -> None:
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    real = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    chunks = run(
        repairer(),
        chunk({"content": "a"}, usage=None),
        chunk({"content": "b"}, usage=zero),
        chunk({}, finish="stop", usage=real),
    )
    assert [("usage" in c) for c in chunks] == [False, False, False, True]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == real
    assert chunks[-1]["id"] == chunks[0]["id"]


def test_a_usage_only_chunk_is_held_for_the_end() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    fix = repairer()
    assert fix.repair(Event(orjson.dumps({"id": "c1", "choices": [], "usage": usage}).decode())) == []
    assert orjson.loads(fix.finish()[-1])["usage"] == usage


LLAMA_USAGE_CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "up",
    "system_fingerprint": "b6000-abc",
    "choices": [],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    "timings": {"prompt_n": 5, "predicted_n": 2, "predicted_per_second": 30.5},
}


@pytest.mark.parametrize("ride", [False, True], ids=["usage-chunk", "on-the-last-chunk"])
def test_every_field_of_a_usage_only_chunk_goes_out_with_the_usage(ride: bool) -> None:
    """llama-server puts timings and system_fingerprint beside the usage; the model is the alias."""
    fix = StreamRepairer(
        StreamIdentity(Kind.CHAT, "alias", 1), Settings("http://x"), usage_on_last_choice=ride, alias="alias"
    )
    chunks = run(fix, chunk({"content": "a"}, "stop"), orjson.dumps(LLAMA_USAGE_CHUNK).decode())
    last = chunks[-1]
    assert last["usage"] == LLAMA_USAGE_CHUNK["usage"]
    assert (last["timings"], last["system_fingerprint"]) == (LLAMA_USAGE_CHUNK["timings"], "b6000-abc")
    assert {c["model"] for c in chunks} == {"alias"}
    assert bool(last["choices"]) is ride


def test_usage_on_a_chunk_with_choices_leaves_its_other_fields_there() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    first, last = run(repairer(), chunk({}, "stop", usage=usage, timings={"prompt_n": 5}))
    assert first["timings"] == {"prompt_n": 5}
    assert "timings" not in last
    assert last["usage"] == usage


def test_usage_can_be_passed_as_the_upstream_sent_it() -> None:
    [got] = run(repairer(final_usage_only=False), chunk({"content": "a"}, usage=None))
    assert got["usage"] is None


@pytest.mark.parametrize(
    "data",
    ['{"type":"mcp_tool_call","name":"search"}', '{"id":"c","choices":[],"prompt_progress":{"processed":1}}'],
    ids=["localai-mcp", "llamacpp-progress"],
)
def test_non_chunk_events_are_dropped(data: str) -> None:
    fix = repairer()
    assert fix.repair(Event(data)) == []
    assert fix.repair(Event(chunk({"content": "a"})))  # a real chunk after it still goes out
    assert repairer(drop_non_chunks=False).repair(Event(data)) == [data.encode()]


def test_a_stream_of_nothing_but_other_shapes_is_an_error() -> None:
    fix = repairer()
    fix.repair(Event('{"index":1,"token":{"id":5,"text":" a","special":false}}'))
    with pytest.raises(UpstreamError, match="held no OpenAI chunks"):
        fix.finish()


@pytest.mark.parametrize(
    "data",
    ['{"error":{"message":"m","code":400}}', '{"error":"m"}', '{"text":"m","error_code":50001}'],
)
def test_error_payloads_raise_with_the_upstreams_message(data: str) -> None:
    with pytest.raises(UpstreamReported, match=r"^m$"):
        repairer().repair(Event(data))


def test_an_error_event_raises() -> None:
    with pytest.raises(UpstreamReported, match="shift"):
        repairer().repair(Event('{"code":500,"message":"shift"}', "error"))


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '"text"', '{"id": "x",'])
def test_a_payload_that_is_no_json_object_is_an_error(data: str) -> None:
    with pytest.raises(UpstreamError, match="not a JSON object"):
        repairer().repair(Event(data))


@pytest.mark.parametrize("done", ["[DONE]", " [DONE] "])
def test_done_finishes_the_stream(done: str) -> None:
    fix = repairer()
    assert fix.repair(Event(done)) == []
    assert fix.finished


LIMIT = 65000


def fitted(body: dict[str, Any], limit: int = LIMIT) -> list[dict[str, Any]]:
    payloads = fit(body, limit, Counter())
    assert all(len(b"data: " + payload) <= limit for payload in payloads)
    return [orjson.loads(payload) for payload in payloads]


@pytest.mark.parametrize(
    "alphabet", ["a", "é", "你", '"\\\n', "\x01"], ids=["ascii", "latin", "cjk", "escapes", "control"]
)
def test_a_200_kb_delta_is_split_with_its_text_unchanged(alphabet: str) -> None:
    text = (alphabet * (200_000 // len(alphabet)))[:200_000]
    body = orjson.loads(chunk({"role": "assistant", "content": text}, finish="length"))
    pieces = fitted(body)
    assert len(pieces) > 1
    assert "".join(p["choices"][0]["delta"]["content"] for p in pieces) == text
    assert [p["choices"][0]["finish_reason"] for p in pieces] == [None] * (len(pieces) - 1) + ["length"]
    assert {p["id"] for p in pieces} == {"c1"}


def test_reasoning_and_completion_text_split_too() -> None:
    body = {
        "id": "c",
        "choices": [{"index": 0, "delta": {"reasoning_content": "r" * 90_000, "content": "c" * 70_000}}],
    }
    pieces = fitted(body)
    assert "".join(p["choices"][0]["delta"].get("reasoning_content", "") for p in pieces) == "r" * 90_000
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in pieces) == "c" * 70_000
    completion = {"id": "c", "choices": [{"index": 0, "text": "t" * 150_000, "finish_reason": None}]}
    assert "".join(p["choices"][0]["text"] for p in fitted(completion)) == "t" * 150_000


def test_bulky_fields_go_before_anything_is_split() -> None:
    body = orjson.loads(
        chunk({"content": "keep"}, finish="stop", timings={"t": "x" * 70_000}, context=[1] * 30_000)
    )
    [got] = fitted(body)
    assert "timings" not in got
    assert "context" not in got
    assert got["choices"][0]["delta"]["content"] == "keep"


def test_a_small_chunk_keeps_its_bulky_fields() -> None:
    body = orjson.loads(chunk({"content": "keep"}, timings={"t": 1}))
    assert fitted(body)[0]["timings"] == {"t": 1}


def test_what_cannot_be_split_is_an_error_never_a_cut() -> None:
    data = chunk({"tool_calls": [{"index": 0, "function": {"name": "x" * 70_000}}]})
    with pytest.raises(LineTooLong, match=r"^the upstream sent a chunk of 70\d{3} bytes .*--max-line-bytes"):
        fit(orjson.loads(data), LIMIT, Counter(), data)


def test_a_chunk_the_adapter_made_too_long_is_not_blamed_on_the_upstream() -> None:
    body = orjson.loads(chunk({"tool_calls": [{"index": 0, "function": {"name": "x" * 70_000}}]}))
    with pytest.raises(InternalError, match=r"^sse-adapter made a chunk of .*--max-line-bytes") as made:
        fit(body, LIMIT, Counter())
    assert "upstream" not in made.value.message


def test_a_chunk_the_adapters_repairs_grew_too_long_is_not_blamed_on_the_upstream() -> None:
    """An alias longer than the upstream's model name, on a chunk just under the limit."""
    body = orjson.loads(chunk({"content": "a"}))
    body["choices"][0]["logprobs"] = {"content": [{"token": "t" * (LIMIT - 400), "logprob": 0.0}]}
    data = orjson.dumps(body).decode()
    assert len(data) + 6 < LIMIT
    fix = StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://x"), alias="a" * 500)
    with pytest.raises(InternalError, match=r"^sse-adapter's repairs grew the upstream's chunk of \d+ bytes"):
        fix.repair(Event(data))


def test_the_line_limit_is_a_setting() -> None:
    fix = repairer(max_line_bytes=2000)
    payloads = fix.repair(Event(chunk({"content": "z" * 5000})))
    assert len(payloads) > 2
    assert all(len(payload) + 6 <= 2000 for payload in payloads)


def test_a_clean_chunk_over_the_limit_in_bytes_is_split_though_short_in_characters() -> None:
    """30,000 CJK characters are 90,000 bytes: the limit counts bytes, as One-API's scanner does."""
    text = "你" * 30_000
    payloads = repairer().repair(Event(chunk({"content": text})))
    assert len(payloads) > 1
    assert all(len(payload) + 6 <= 65_000 for payload in payloads)
    assert "".join(orjson.loads(p)["choices"][0]["delta"]["content"] for p in payloads) == text


@pytest.mark.parametrize("finish", ["", "x", None, "eos_token"])
def test_pieces_fit_exactly_whatever_finish_reason_the_last_carries(finish: str | None) -> None:
    """The last piece carries the upstream's finish_reason, the others null:
    each must fit, the shorter ("" is two bytes, null four) included."""
    fix = repairer(max_line_bytes=1500, map_finish_reason=False)
    for size in range(3000, 3100):
        payloads = fix.repair(Event(chunk({"content": "y" * size}, finish=finish)))
        assert all(len(payload) + 6 <= 1500 for payload in payloads), size


@pytest.mark.parametrize(
    ("choice", "why"),
    [
        ({"index": 0, "delta": {"content": "a"}, "finish_reason": ["stop"]}, "finish_reason a list"),
        ({"index": 0, "delta": {"content": "a"}, "finish_reason": {"type": "stop"}}, "finish_reason a dict"),
        ({"index": [0], "delta": {"content": "a"}, "finish_reason": None}, "index a list"),
        (
            {"index": 0, "delta": {"content": [{"type": "text", "text": "a"}]}, "finish_reason": "stop"},
            "parts",
        ),
        ({"index": 0, "delta": {"content": 7}, "finish_reason": "stop"}, "content a number"),
    ],
)
def test_values_of_the_wrong_type_pass_unchanged(choice: dict[str, Any], why: str) -> None:
    data = orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "choices": [choice]})
    for think_tags in ("keep", "split"):
        [out] = repairer(think_tags=think_tags).repair(Event(data.decode()))
        assert orjson.loads(out)["choices"] == [choice], why


def test_choices_that_are_no_list_pass_unchanged() -> None:
    data = '{"id":"c1","object":"chat.completion.chunk","created":1,"choices":5}'
    assert repairer().repair(Event(data)) == [data.encode()]


def test_think_tags_output_wraps_reasoning_into_content_across_chunks() -> None:
    chunks = run(
        repairer(reasoning_field="think-tags"),
        chunk({"reasoning_content": "Hm, "}),
        chunk({"reasoning": "four."}),
        chunk({"content": "4"}, "stop"),
    )
    texts = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert texts == ["<think>Hm, ", "four.", "</think>4"]
    assert not any("reasoning" in name for c in chunks for name in c["choices"][0]["delta"])


def test_think_tags_output_keeps_reasoning_it_cannot_put_in_content() -> None:
    parts = [{"type": "text", "text": "x"}]
    [out] = run(
        repairer(reasoning_field="think-tags"), chunk({"content": parts, "reasoning_content": "r"}, id="")
    )
    assert out["id"] != ""  # a repair rewrote the chunk: the reasoning must survive that
    assert out["choices"][0]["delta"] == {"content": parts, "reasoning_content": "r"}
