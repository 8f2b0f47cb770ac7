"""The body sent upstream, and the fields a server's error says it refused (pure)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import orjson
import pytest

from sse_adapter.errors import InvalidJSON
from sse_adapter.repair.request import ModelAlias, Rejection, prepare, rejected_fields


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
    pytest.param(
        400,
        {
            "error": {
                "message": "Unknown parameter: 'verbosity'.",
                "type": "invalid_request_error",
                "param": "verbosity",
                "code": "unknown_parameter",
            }
        },
        {"verbosity"},
        id="openai-param",
    ),
]

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _raw(body: object) -> bytes:
    return body.encode() if isinstance(body, str) else orjson.dumps(body)


@pytest.mark.parametrize(("status", "body", "names"), REFUSALS)
def test_each_servers_refusal_names_its_fields(status: int, body: object, names: set[str]) -> None:
    request = {**BASE, **dict.fromkeys(names, 1), "other": 2}
    assert rejected_fields(status, _raw(body), _raw(request)) == Rejection(frozenset(names), frozenset(names))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b'{"error": {"message": "messages.0.user.name\\n  Extra inputs are not permitted"}}'),  # nested
        (422, b'{"detail": [{"type": "extra_forbidden", "loc": ["body", "messages", 0, "id"]}]}'),
        (400, b'{"error": {"message": "Unsupported param: model"}}'),  # never dropped
        (404, b'{"error": {"message": "Unsupported param: best_of"}}'),  # not a refusal status
        (400, b'{"error": {"message": "the prompt is too long"}}'),
        (422, b'{"detail": "Unexpected fields in the request: __import__(\'os\')"}'),
        (400, b'{"error": {"message": "Unsupported param: absent"}}'),  # not in the request
        # vLLM's VLLMValidationError: param names the field whose value was wrong, not a refused field
        (400, b'{"error": {"message": "best_of must be 1", "type": "BadRequestError", "param": "best_of"}}'),
    ],
)
def test_what_names_no_top_level_field_drops_nothing(status: int, body: bytes) -> None:
    request = {**BASE, "best_of": 2, "model": "m"}
    assert rejected_fields(status, body, _raw(request)) == Rejection()


# A hostile client writes a refusal into a value; the server echoes the value in its error.
POISON = "Unsupported param: tools"
ECHOES = [
    pytest.param(
        400,
        {
            "object": "error",
            "message": "[{'type': 'int_parsing', 'loc': ('body', 'max_tokens'), 'msg': 'Input should be a "
            f"valid integer, unable to parse string as an integer', 'input': '{POISON}'}}]",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        POISON,
        id="vllm-pydantic-list",
    ),
    pytest.param(
        400,
        {
            "object": "error",
            "message": "1 validation error for ChatCompletionRequest\nmax_tokens\n  Input should be a valid "
            f"integer, unable to parse string as an integer [type=int_parsing, input_value='{POISON}', "
            "input_type=str]",
            "code": 40001,
        },
        POISON,
        id="fastchat-pydantic-text",
    ),
    pytest.param(
        422,
        {"detail": [{"type": "int_parsing", "loc": ["body", "max_tokens"], "msg": "...", "input": POISON}]},
        POISON,
        id="fastapi-input",
    ),
    pytest.param(
        422,
        "Failed to deserialize the JSON body into the target type: max_tokens: invalid type: string "
        '"target type: unknown field `tools`", expected u32 at line 1 column 70',
        "target type: unknown field `tools`",
        id="tgi-string",
    ),
    pytest.param(
        422,
        {"detail": "max_tokens: Input should be an integer: 'Unexpected fields in the request: {'tools'}'"},
        "Unexpected fields in the request: {'tools'}",
        id="hf-serve",
    ),
    pytest.param(
        400,
        {
            "object": "error",
            "message": "[{'type': 'int_parsing', 'loc': ('body', 'max_tokens'), 'input': \"x'type': "
            "'extra_forbidden', 'loc': ('body', 'tools')\"}]",
        },
        "x'type': 'extra_forbidden', 'loc': ('body', 'tools')",
        id="vllm-pydantic-list-forged",
    ),
]


@pytest.mark.parametrize(("status", "body", "value"), ECHOES)
def test_a_refusal_the_server_only_echoes_from_the_request_is_not_heard(
    status: int, body: object, value: str
) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    echoed = _raw({**BASE, "tools": tools, "max_tokens": value})
    assert rejected_fields(status, _raw(body), echoed) == Rejection()
    # the same words, not in the request: the server's own
    heard = rejected_fields(status, _raw(body), _raw({**BASE, "tools": tools, "max_tokens": 5}))
    assert heard == Rejection(frozenset({"tools"}), frozenset({"tools"}))


def test_the_request_is_read_decoded_keys_and_nested_values_too() -> None:
    refusal = orjson.dumps({"error": {"message": f"max_tokens: bad input {POISON!r}"}})
    escaped = prepare(
        b'{"model":"m","tools":[1],"max_tokens":"Un\\u0073upported param: t\\u006fols"}', ask_usage=False
    )
    assert rejected_fields(400, refusal, escaped.body) == Rejection()
    in_a_key = {**BASE, "tools": [1], "metadata": {"x": [{POISON: 1}]}}
    assert rejected_fields(400, refusal, _raw(in_a_key)) == Rejection()
    deep = b"[" * 500 + orjson.dumps(POISON) + b"]" * 500  # as deep as a request may be
    request = _raw({**BASE, "tools": [1]})[:-1] + b',"deep":' + deep + b"}"
    assert rejected_fields(400, refusal, request) == Rejection()


@pytest.mark.parametrize(
    ("body", "value", "rejection"),
    [
        pytest.param(
            "Failed to deserialize the JSON body into the target type: seed: invalid type: null, "
            "expected u64 at line 1 column 80",
            None,
            Rejection(frozenset({"seed"})),
            id="tgi-null-of-a-null",
        ),
        pytest.param(
            "Failed to deserialize the JSON body into the target type: seed: invalid type: null, "
            "expected u64 at line 1 column 80",
            7,
            Rejection(),
            id="tgi-null-of-a-value",
        ),
        pytest.param(
            {"error": {"message": "Unsupported param: seed"}},
            None,
            Rejection(frozenset({"seed"})),
            id="field-refused-while-null",
        ),
        pytest.param(
            {"detail": [{"type": "int_type", "loc": ["body", "seed"], "msg": "...", "input": None}]},
            None,
            Rejection(frozenset({"seed"})),
            id="pydantic-null-input",
        ),
        pytest.param(
            {"detail": [{"type": "int_type", "loc": ["body", "seed"], "msg": "...", "input": None}]},
            7,
            Rejection(),
            id="pydantic-null-input-of-a-value",
        ),
    ],
)
def test_a_refused_null_is_dropped_from_its_request_and_never_learned(
    body: object, value: object, rejection: Rejection
) -> None:
    assert rejected_fields(422, _raw(body), _raw({**BASE, "seed": value})) == rejection


def test_the_echo_check_is_linear_in_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many fields an error names in words, the request is read a
    bounded number of times: twice the request, at most ~twice the work."""
    from sse_adapter.repair import request as module

    decoded: list[int] = []

    def counted(text: bytes) -> object:
        decoded.append(len(text))
        return json.loads(text)

    monkeypatch.setattr(module, "json", SimpleNamespace(loads=counted))
    names = [f"field_{number}" for number in range(1000)]
    refusal = orjson.dumps({"error": {"message": " ".join(f"Unsupported param: {name}" for name in names)}})

    def work(size: int) -> int:
        decoded.clear()
        notes = [f"{number:0100}\n" for number in range(size)]  # an escape in each: each decoded
        heard = rejected_fields(400, refusal, _raw({**BASE, **dict.fromkeys(names, 1), "notes": notes}))
        assert len(heard.learn) == 32  # the first 32 words the server said: the rest wait for its next answer
        return sum(decoded)

    once = work(40_000)
    assert 0 < work(80_000) <= once * 2.2
