"""Upstream error shapes and request fields (pure)."""

from __future__ import annotations

import pytest

from sse_adapter.repair.dialects import body_error, chunk_error, event_error, is_real_usage


@pytest.mark.parametrize(
    ("chunk", "message", "kind", "code"),
    [
        ({"error": "boom", "error_type": "generation"}, "boom", "generation", None),
        ({"error": {"message": "bad", "http_status_code": 422}}, "bad", None, 422),
        (
            {"error": {"message": "long", "type": "BadRequestError", "param": None, "code": 400}},
            "long",
            "BadRequestError",
            400,
        ),
        ({"error": {"object": "error", "message": "ctx", "code": 400}}, "ctx", None, 400),
        ({"error": {"code": 500, "message": "rpc", "type": ""}}, "rpc", None, 500),
        ({"text": "NETWORK ERROR", "error_code": 50001}, "NETWORK ERROR", None, 50001),
        ({"error": {"code": 7}}, '{"code":7}', None, 7),
    ],
    ids=["tgi-old", "tgi-new", "vllm", "sglang", "localai", "fastchat", "no-message"],
)
def test_every_error_shape_is_found(
    chunk: dict[str, object], message: str, kind: str | None, code: object
) -> None:
    error = chunk_error(chunk)
    assert error is not None
    assert (error.message, error.upstream_type, error.upstream_code) == (message, kind, code)


@pytest.mark.parametrize(
    "chunk",
    [
        {"choices": []},
        {"error": None, "choices": []},
        {"error": "", "choices": []},
        {"error_code": 0, "text": "x"},
    ],
)
def test_ordinary_chunks_are_no_errors(chunk: dict[str, object]) -> None:
    assert chunk_error(chunk) is None


def test_the_legacy_llamacpp_error_line() -> None:
    error = event_error('{"code":500,"message":"context shift is disabled","type":"server_error"}')
    assert error.to_openai() == {
        "error": {"message": "context shift is disabled", "type": "server_error", "code": 500}
    }
    assert event_error("plain words").message == "plain words"


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (
            422,
            "application/json",
            b'{"error":"Input validation error","error_type":"validation"}',
            (422, {"message": "Input validation error", "type": "validation", "code": 422}),
        ),
        (
            400,
            "application/json",
            b'{"object":"error","message":"too long","type":"BadRequestError","code":400}',
            (400, {"message": "too long", "type": "BadRequestError", "code": 400}),
        ),
        (
            404,
            "application/json",
            b'{"detail":"Not Found"}',
            (404, {"message": "Not Found", "type": "upstream_error", "code": 404}),
        ),
        (
            502,
            "text/html",
            b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            (
                502,
                {
                    "message": "502 Bad Gateway nginx (an HTML page: a proxy in front of the model "
                    "server answered, not the server)",
                    "type": "upstream_error",
                    "code": 502,
                },
            ),
        ),
        (
            500,
            "text/plain",
            b"",
            (
                500,
                {
                    "message": "the model server answered HTTP 500 with an empty body, so it did not say "
                    "why; its own log does (llama-cpp-python, for one, answers 400 this way to a request it "
                    "cannot parse)",
                    "type": "upstream_error",
                    "code": 500,
                },
            ),
        ),
        (
            200,
            "application/json",
            b'{"error":{"message":"overloaded","code":503}}',
            (503, {"message": "overloaded", "type": "upstream_error", "code": 503}),
        ),
        (
            200,
            "application/json",
            b'{"error":"model not loaded"}',
            (502, {"message": "model not loaded", "type": "upstream_error", "code": 200}),
        ),
    ],
    ids=["tgi", "vllm", "fastapi", "html-proxy", "empty", "200-with-code", "200-without-code"],
)
def test_error_bodies_keep_the_status_and_the_upstreams_words(
    status: int, content_type: str, body: bytes, expected: tuple[int, dict[str, object]]
) -> None:
    error = body_error(status, content_type, body)
    assert error is not None
    assert (error.http_status, error.to_openai()["error"]) == expected


def test_a_2xx_body_that_is_no_error_is_none() -> None:
    assert body_error(200, "application/json", b'{"choices":[]}') is None
    assert body_error(200, "text/plain", b"hello") is None


@pytest.mark.parametrize(
    ("usage", "real"),
    [
        (None, False),
        ({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, False),
        ({"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}, True),
        # issue 25: counts no generation has are placeholders, not usage
        ({"total_tokens": 3}, False),
        ({"prompt_tokens": 2}, False),
        ({"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}, False),
        ({"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 9}, False),
        ("3", False),
    ],
)
def test_real_usage(usage: object, real: bool) -> None:
    assert is_real_usage(usage) is real
