"""A fake model server fast enough never to be the bottleneck.

Raw asyncio and pre-built frames. It serves the three relayed formats, each
on its own path and in its own shape, as vLLM writes them:
  /v1/chat/completions  `data: {chunk}` events and a [DONE]
  /v1/responses         typed events (`event: <type>` + `data: {...}`) numbered by
                        `sequence_number`: response.created, ..., one
                        response.output_text.delta per token, ..., response.completed
  /v1/messages          Anthropic's typed events: message_start, content_block_start,
                        one content_block_delta (text_delta) per token, ..., message_stop
What to stream comes in the request body's "bench" field, which the adapter
forwards untouched:
  {"mode": "burst", "events": N}                N events, as fast as the socket takes them
  {"mode": "paced", "rate": R, "seconds": S}    R events a second, each stamped with its send time
  {"mode": "lockstep", "rate": R, "seconds": S} as paced, but every lockstep stream of that rate gets
                                                its event at the same instant, one HTTP chunk each:
                                                the pattern of a GPU server's continuous batching;
                                                the instants are multiples of 1/R on the monotonic clock
  {"mode": "idle", "seconds": S}                headers, then silence (a model thinking)
Any plan may say "end": "error": the stream then ends in an in-band error in
its format's shape (chat: vLLM's error chunk before its [DONE]). As vLLM, a
chat stream sends a usage chunk last when the request asks for one
(stream_options.include_usage); Responses and Messages streams always carry
their usage. Any other path gets a 404 (the adapter's tokenize and readiness
checks).

    python bench/upstream.py PORT
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any

# Keep-alive, as vLLM, TGI and llama.cpp are: a client may send its next request on the same connection.
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
BATCH = 64  # events per write in burst mode


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def typed(body: dict[str, Any]) -> bytes:
    """One typed event as vLLM frames it: ``event:`` named for its type, then its data."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return b"event: %s\ndata: %s\n\n" % (str(body["type"]).encode(), data)


# Chat Completions: a vLLM-like chunk that needs no repair, the common case, relayed byte for byte.
PREFIX = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
DONE = b"data: [DONE]\n\n"
ERROR = b'data: {"error": {"message": "bench error", "type": "BadRequestError", "code": 400}}\n\n'
USAGE = PREFIX + b'"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n'


class Chat:
    """Chat Completions: ``data:`` chunks, usage when asked for, ``[DONE]``."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def head(self) -> bytes:
        """What goes before the first token, one HTTP chunk an event: nothing, for chat."""
        return b""

    def token(self, text: bytes) -> bytes:
        return PREFIX + b'"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % text

    def burst(self, events: int) -> bytes:
        """``events`` tokens, one HTTP chunk each."""
        return TOKEN * events

    def tail(self, error: bool) -> bytes:
        """What ends the stream: ``error`` in-band, else well."""
        if error:
            return chunked(ERROR) + chunked(DONE)
        return (chunked(USAGE) if self.usage else b"") + chunked(DONE)


TOKEN = chunked(Chat({}).token(b"tok"))


def _response(status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "resp_bench",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "bench",
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": usage,
    }


_ITEM = {"id": "msg_bench", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
_PART = {"type": "output_text", "text": "", "annotations": []}
_PLACE: dict[str, Any] = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
_RESPONSES_USAGE = {
    "input_tokens": 1,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 1,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 2,
}


class Responses:
    """OpenAI Responses as vLLM streams it: every event numbered, one above the one before,
    so each passes the adapter byte for byte (the common case)."""

    DELTA = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":%d,'
        b'"item_id":"msg_bench","output_index":0,"content_index":0,"delta":"%s","logprobs":[]}\n\n'
    )

    def __init__(self, body: dict[str, Any]) -> None:
        self.number = 0

    def _next(self) -> int:
        self.number += 1
        return self.number - 1

    def head(self) -> bytes:
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": _response("in_progress")},
            {"type": "response.in_progress", "response": _response("in_progress")},
            {"type": "response.output_item.added", "output_index": 0, "item": _ITEM},
            {"type": "response.content_part.added", **_PLACE, "part": _PART},
        ]
        return b"".join(chunked(typed({**event, "sequence_number": self._next()})) for event in events)

    def token(self, text: bytes) -> bytes:
        return self.DELTA % (self._next(), text)

    def burst(self, events: int) -> bytes:
        return b"".join(chunked(self.token(b"tok")) for _ in range(events))

    def tail(self, error: bool) -> bytes:
        if error:
            failed = {"type": "error", "code": "server_error", "message": "bench error", "param": None}
            return chunked(typed({**failed, "sequence_number": self._next()}))
        text = {"type": "output_text", "text": "tok", "annotations": []}
        done = {**_ITEM, "status": "completed", "content": [text]}
        events: list[dict[str, Any]] = [
            {"type": "response.output_text.done", **_PLACE, "text": "tok", "logprobs": []},
            {"type": "response.content_part.done", **_PLACE, "part": text},
            {"type": "response.output_item.done", "output_index": 0, "item": done},
            {"type": "response.completed", "response": _response("completed", _RESPONSES_USAGE)},
        ]
        return b"".join(chunked(typed({**event, "sequence_number": self._next()})) for event in events)


_MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "bench",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 0},
    },
}


class Messages:
    """Anthropic Messages as vLLM streams it: text deltas between a start and a stop."""

    DELTA = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"'
    )
    HEAD = chunked(typed(_MESSAGE_START)) + chunked(
        typed({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    )
    TAIL = b"".join(
        chunked(typed(event))
        for event in (
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 1},
            },
            {"type": "message_stop"},
        )
    )
    ERROR = chunked(typed({"type": "error", "error": {"type": "api_error", "message": "bench error"}}))

    def __init__(self, body: dict[str, Any]) -> None:
        pass

    def head(self) -> bytes:
        return self.HEAD

    def token(self, text: bytes) -> bytes:
        return self.DELTA + text + b'"}}\n\n'

    def burst(self, events: int) -> bytes:
        return chunked(self.token(b"tok")) * events

    def tail(self, error: bool) -> bytes:
        return self.ERROR if error else self.TAIL


FORMATS: dict[bytes, type[Chat | Responses | Messages]] = {
    b"/v1/chat/completions": Chat,
    b"/v1/responses": Responses,
    b"/v1/messages": Messages,
}
Shape = Chat | Responses | Messages


def stamp() -> bytes:
    """A token whose text is its send time (CLOCK_MONOTONIC is the same in every process)."""
    return str(time.monotonic_ns()).encode()


class Lockstep:
    """One clock per rate: each tick writes one stamped event to every stream on it, at once."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate
        self.streams: dict[asyncio.StreamWriter, tuple[float, asyncio.Future[None], Shape]] = {}
        self.task: asyncio.Task[None] | None = None

    async def join(self, writer: asyncio.StreamWriter, seconds: float, shape: Shape) -> None:
        done = asyncio.get_running_loop().create_future()
        self.streams[writer] = (time.monotonic() + seconds, done, shape)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self.tick())
        await done

    async def tick(self) -> None:
        # On a grid of the interval (the monotonic clock is every process's): a
        # measurement can tell when the relay is between two ticks, and idle.
        next_at = math.ceil(time.monotonic() / self.interval) * self.interval
        while self.streams:
            text = stamp()
            now = time.monotonic()
            for writer, (end, done, shape) in list(self.streams.items()):
                if now >= end or writer.is_closing():
                    del self.streams[writer]
                    done.set_result(None)
                else:
                    writer.write(chunked(shape.token(text)))
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


CLOCKS: dict[float, Lockstep] = {}


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:  # one request after another, until the client closes
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            body = json.loads(await reader.readexactly(length)) if length else {}
            method, path = head.split(b" ", 2)[:2]
            shape_of = FORMATS.get(path)
            if method != b"POST" or shape_of is None or "bench" not in body:
                writer.write(NOT_FOUND)
                continue
            plan, shape = body["bench"], shape_of(body)
            writer.write(HEAD + shape.head())
            await stream(writer, plan, shape)
            writer.write(shape.tail(plan.get("end") == "error") + b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def stream(writer: asyncio.StreamWriter, plan: dict[str, Any], shape: Shape) -> None:
    if plan["mode"] == "burst":
        events = int(plan["events"])
        for _ in range(events // BATCH):
            writer.write(shape.burst(BATCH))
            await writer.drain()
        writer.write(shape.burst(events % BATCH))
    elif plan["mode"] == "paced":
        interval, end = 1 / plan["rate"], time.monotonic() + plan["seconds"]
        next_at = time.monotonic()
        while next_at < end:
            writer.write(chunked(shape.token(stamp())))
            await writer.drain()
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    elif plan["mode"] == "lockstep":
        clock = CLOCKS.setdefault(plan["rate"], Lockstep(plan["rate"]))
        await clock.join(writer, plan["seconds"], shape)
    else:
        await asyncio.sleep(plan["seconds"])


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=8192)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
