"""Responses and Messages streams as their servers write them, for fake upstreams."""

from __future__ import annotations

from typing import Any

import orjson


def typed(body: dict[str, Any]) -> bytes:
    """One event as vLLM and OpenAI frame it: ``event:`` named for its type, then its data."""
    return b"event: " + body["type"].encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"


def response(rid: str, status: str, usage: dict[str, Any] | None = None, text: str = "") -> dict[str, Any]:
    output = (
        [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if text
        else []
    )
    return {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "m",
        "output": output,
        "usage": usage,
    }


USAGE = {
    "input_tokens": 7,
    "output_tokens": 3,
    "total_tokens": 10,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens_details": {"reasoning_tokens": 0},
}


def responses_head(rid: str = "resp_up") -> list[bytes]:
    """What a Responses stream says before its first text."""
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    return [
        typed({"type": "response.created", "sequence_number": 0, "response": response(rid, "in_progress")}),
        typed(
            {"type": "response.in_progress", "sequence_number": 1, "response": response(rid, "in_progress")}
        ),
        typed({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0, "item": item}),
        typed(
            {
                "type": "response.content_part.added",
                "sequence_number": 3,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": part,
            }
        ),
    ]


def responses_delta(text: str, number: int) -> bytes:
    return typed(
        {
            "type": "response.output_text.delta",
            "sequence_number": number,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": text,
            "logprobs": [],
        }
    )


def responses_tail(text: str, number: int, rid: str = "resp_up", usage: Any = USAGE) -> list[bytes]:
    """What ends a Responses stream well, numbered from ``number``."""
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [part]}
    return [
        typed(
            {
                "type": "response.output_text.done",
                "sequence_number": number,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            }
        ),
        typed(
            {
                "type": "response.content_part.done",
                "sequence_number": number + 1,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": part,
            }
        ),
        typed(
            {
                "type": "response.output_item.done",
                "sequence_number": number + 2,
                "output_index": 0,
                "item": item,
            }
        ),
        typed(
            {
                "type": "response.completed",
                "sequence_number": number + 3,
                "response": response(rid, "completed", usage, text),
            }
        ),
    ]


def responses_stream(words: list[str], rid: str = "resp_up", usage: Any = USAGE) -> list[bytes]:
    """A whole good Responses stream: one delta per word."""
    deltas = [responses_delta(word, 4 + n) for n, word in enumerate(words)]
    return [*responses_head(rid), *deltas, *responses_tail("".join(words), 4 + len(words), rid, usage)]


def message_start(input_tokens: int = 7) -> bytes:
    message = {
        "id": "msg_up",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }
    return typed({"type": "message_start", "message": message})


def messages_head(input_tokens: int = 7) -> list[bytes]:
    return [
        message_start(input_tokens),
        typed({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ]


def messages_delta(text: str) -> bytes:
    return typed({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})


def messages_tail(output_tokens: int | None = 3) -> list[bytes]:
    usage = {} if output_tokens is None else {"output_tokens": output_tokens}
    return [
        typed({"type": "content_block_stop", "index": 0}),
        typed(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": usage,
            }
        ),
        typed({"type": "message_stop"}),
    ]


def messages_stream(words: list[str], output_tokens: int | None = 3) -> list[bytes]:
    return [*messages_head(), *(messages_delta(word) for word in words), *messages_tail(output_tokens)]
