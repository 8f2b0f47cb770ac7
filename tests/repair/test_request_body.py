"""The body sent upstream, and the fields a server's error says it refused (pure)."""

from __future__ import annotations

import orjson
import pytest

from sse_adapter.errors import InvalidJSON
from sse_adapter.repair.request import ModelAlias, prepare, rejected_fields


def _sent(body: dict[str, object], **options: object) -> dict[str, object]:
    outgoing = prepare(orjson.dumps(body), **{"ask_usage": True, **options})  # type: ignore[arg-type]
    parsed: dict[str, object] = orjson.loads(outgoing.body)
    return parsed


@pytest.mark.parametrize(
    ("body", "stream", "model"),
    [
        (b'{"model":"m","stream":true}', True, "m"),
        (b'{"model":"m","stream":"yes"}', False, "m"),
        (b'{"stream":true}', True, ""),
    ],
)
def test_the_stream_flag_and_the_model_are_read(body: bytes, stream: bool, model: str) -> None:
    outgoing = prepare(body, ask_usage=False)
    assert (outgoing.stream, outgoing.model) == (stream, model)


@pytest.mark.parametrize("body", [b"not json", b"[]", b"", b'{"model": "m",'])
def test_a_body_that_is_no_json_object_is_the_clients_error(body: bytes) -> None:
    with pytest.raises(InvalidJSON, match="not a JSON object") as raised:
        prepare(body, ask_usage=True)
    assert raised.value.http_status == 400


def test_a_body_that_needs_nothing_goes_up_byte_for_byte() -> None:
    body = b'{ "model" : "m",  "messages": [], "stream": false }'
    outgoing = prepare(body, ask_usage=True)
    assert outgoing.body is body
    assert not outgoing.repairs


def test_usage_is_asked_for_on_a_stream_that_lacks_it() -> None:
    sent = _sent({"model": "m", "stream": True, "stream_options": {"continuous_usage_stats": False}})
    assert sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    outgoing = prepare(b'{"model":"m","stream":true}', ask_usage=True)
    assert not outgoing.usage_asked
    assert outgoing.repairs["stream_usage_asked"] == 1


def test_a_client_that_asked_for_usage_is_told_apart() -> None:
    body = orjson.dumps({"stream": True, "stream_options": {"include_usage": True}})
    outgoing = prepare(body, ask_usage=True)
    assert outgoing.usage_asked
    assert outgoing.body is body


def test_pass_mode_leaves_the_stream_options_as_they_are() -> None:
    assert "stream_options" not in _sent({"stream": True}, ask_usage=False)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "stream_options": {"include_usage": True}},  # vLLM: 400 without stream
        {"model": "m", "stream": False, "stream_options": None},
    ],
)
def test_stream_options_leave_a_non_stream_request(body: dict[str, object]) -> None:
    assert "stream_options" not in _sent(body)


def test_null_stream_options_leave_a_stream_request_and_usage_is_asked_anew() -> None:
    assert _sent({"stream": True, "stream_options": None})["stream_options"] == {"include_usage": True}
    assert "stream_options" not in _sent({"stream": True, "stream_options": None}, ask_usage=False)


def test_fields_named_are_dropped_but_never_those_a_request_needs() -> None:
    body = {"model": "m", "messages": [], "prompt": "p", "stream": True, "logit_bias": {}, "seed": 1}
    sent = _sent(body, drop=("logit_bias", "model", "messages", "prompt", "stream", "absent"))
    assert set(sent) == {"model", "messages", "prompt", "stream", "stream_options", "seed"}
    outgoing = prepare(orjson.dumps(body), ask_usage=False, drop=("logit_bias", "seed", "absent"))
    assert outgoing.repairs["request_field_dropped"] == 2


def test_without_drops_once_more_and_counts_it() -> None:
    outgoing = prepare(b'{"model":"m","a":1,"b":2}', ask_usage=False)
    again = outgoing.without({"a", "model", "zzz"})
    assert orjson.loads(again.body) == {"model": "m", "b": 2}
    assert again.repairs["request_field_dropped"] == 1


def test_an_alias_renames_sets_defaults_and_drops() -> None:
    alias = ModelAlias(
        "qwen3-nothink",
        upstream_model="Qwen/Qwen3-8B",
        set={"chat_template_kwargs": {"enable_thinking": False}},
        defaults={"max_tokens": 4096, "temperature": 0.6},
        drop=("logit_bias",),
    )
    body = {
        "model": "qwen3-nothink",
        "temperature": 0.1,
        "chat_template_kwargs": {"enable_thinking": True, "other": 1},
        "logit_bias": {"1": 2},
    }
    outgoing = prepare(orjson.dumps(body), ask_usage=False, models={alias.name: alias})
    assert orjson.loads(outgoing.body) == {
        "model": "Qwen/Qwen3-8B",
        "temperature": 0.1,
        "max_tokens": 4096,
        "chat_template_kwargs": {"enable_thinking": False, "other": 1},
    }
    assert (outgoing.model, outgoing.aliased) == ("qwen3-nothink", True)
    assert alias.set == {"chat_template_kwargs": {"enable_thinking": False}}  # never changed by a request


def test_a_model_that_is_no_alias_is_left_alone() -> None:
    alias = ModelAlias("other", upstream_model="x")
    outgoing = prepare(b'{"model":"m"}', ask_usage=False, models={"other": alias})
    assert not outgoing.aliased
    assert outgoing.body == b'{"model":"m"}'


# Each server's refusal, as it answers it.
REFUSALS = [
    pytest.param(
        400,
        {
            "object": "error",
            "message": "[{'type': 'extra_forbidden', 'loc': ('body', 'max_completion_tokens'), "
            "'msg': 'Extra inputs are not permitted', 'input': 800}]",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        {"max_completion_tokens"},
        id="vllm-pydantic-list",
    ),
    pytest.param(
        400,
        {
            "error": {
                "message": "1 validation error for ChatCompletionRequest\nfoo_field\n  Extra inputs are not "
                "permitted [type=extra_forbidden, input_value=1, input_type=int]",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
        },
        {"foo_field"},
        id="vllm-strict",
    ),
    pytest.param(
        400,
        {
            "object": "error",
            "message": "Stream options can only be defined when stream=True.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        {"stream_options"},
        id="vllm-stream-options",
    ),
    pytest.param(
        422,
        "Failed to deserialize the JSON body into the target type: stream_options: invalid type: null, "
        "expected struct StreamOptions at line 12 column 24",
        {"stream_options"},
        id="tgi-null",
    ),
    pytest.param(
        422,
        "Failed to deserialize the JSON body into the target type: unknown field `min_p`, expected one of "
        "`messages`, `model`",
        {"min_p"},
        id="tgi-unknown",
    ),
    pytest.param(
        422,
        {"detail": "Unexpected fields in the request: {'x', 'logit_bias'}"},
        {"x", "logit_bias"},
        id="hf-serve",
    ),
    pytest.param(
        422,
        {
            "detail": [
                {"type": "extra_forbidden", "loc": ["body", "seed"], "msg": "Extra inputs are not permitted"}
            ]
        },
        {"seed"},
        id="fastapi",
    ),
    pytest.param(
        400,
        {"error": {"code": 400, "message": "Unsupported param: best_of", "type": "invalid_request_error"}},
        {"best_of"},
        id="llama.cpp",
    ),
    pytest.param(
        500, {"error": {"code": 500, "message": "Unsupported param: suffix"}}, {"suffix"}, id="llama.cpp-old"
    ),
]


@pytest.mark.parametrize(("status", "body", "names"), REFUSALS)
def test_each_servers_refusal_names_its_fields(status: int, body: object, names: set[str]) -> None:
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    assert rejected_fields(status, raw) == names


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b'{"error": {"message": "messages.0.user.name\\n  Extra inputs are not permitted"}}'),  # nested
        (422, b'{"detail": [{"type": "extra_forbidden", "loc": ["body", "messages", 0, "id"]}]}'),
        (400, b'{"error": {"message": "Unsupported param: model"}}'),  # never dropped
        (404, b'{"error": {"message": "Unsupported param: best_of"}}'),  # not a refusal status
        (400, b'{"error": {"message": "the prompt is too long"}}'),
        (422, b'{"detail": "Unexpected fields in the request: __import__(\'os\')"}'),
    ],
)
def test_what_names_no_top_level_field_drops_nothing(status: int, body: bytes) -> None:
    assert rejected_fields(status, body) == frozenset()
