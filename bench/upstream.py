"""A fake model server fast enough never to be the bottleneck.

Raw asyncio and pre-built frames. What to stream comes in the request body's
"bench" field, which the adapter forwards untouched:
  {"mode": "burst", "events": N}                N events, as fast as the socket takes them
  {"mode": "paced", "rate": R, "seconds": S}    R events a second, each stamped with its send time
  {"mode": "lockstep", "rate": R, "seconds": S} as paced, but every lockstep stream of that rate gets
                                                its event at the same instant, one HTTP chunk each:
                                                the pattern of a GPU server's continuous batching
  {"mode": "idle", "seconds": S}                headers, then silence (a model thinking)
Any plan may say "end": "error": the stream then ends in an in-band error
chunk (vLLM's shape) before its [DONE]. As vLLM, it sends a usage chunk last
when the request asks for one (stream_options.include_usage), and answers
404 to any other path (the adapter's tokenize and readiness checks).

    python bench/upstream.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

# Keep-alive, as vLLM, TGI and llama.cpp are: a client may send its next request on the same connection.
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
# A vLLM-like chunk that needs no repair: the common case, relayed byte for byte.
PREFIX = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench",'
TOKEN = PREFIX + b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n'
DONE = b"data: [DONE]\n\n"
ERROR = b'data: {"error": {"message": "bench error", "type": "BadRequestError", "code": 400}}\n\n'
USAGE = PREFIX + b'"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n'
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
BATCH = 64  # events per write in burst mode


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stamped() -> bytes:
    """A token whose content is its send time (CLOCK_MONOTONIC is the same in every process)."""
    stamp = str(time.monotonic_ns()).encode()
    return PREFIX + b'"choices":[{"index":0,"delta":{"content":"' + stamp + b'"},"finish_reason":null}]}\n\n'


class Lockstep:
    """One clock per rate: each tick writes the same stamped event to every stream on it."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate
        self.streams: dict[asyncio.StreamWriter, tuple[float, asyncio.Future[None]]] = {}
        self.task: asyncio.Task[None] | None = None

    async def join(self, writer: asyncio.StreamWriter, seconds: float) -> None:
        done = asyncio.get_running_loop().create_future()
        self.streams[writer] = (time.monotonic() + seconds, done)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self.tick())
        await done

    async def tick(self) -> None:
        next_at = time.monotonic()
        while self.streams:
            frame = chunked(stamped())
            now = time.monotonic()
            for writer, (end, done) in list(self.streams.items()):
                if now >= end or writer.is_closing():
                    del self.streams[writer]
                    done.set_result(None)
                else:
                    writer.write(frame)
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
            if not head.startswith(b"POST /v1/chat/completions ") or "bench" not in body:
                writer.write(NOT_FOUND)
                continue
            plan = body["bench"]
            writer.write(HEAD)
            await stream(writer, plan)
            if plan.get("end") == "error":
                writer.write(chunked(ERROR))
            elif (body.get("stream_options") or {}).get("include_usage"):
                writer.write(chunked(USAGE))
            writer.write(chunked(DONE) + b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def stream(writer: asyncio.StreamWriter, plan: dict[str, Any]) -> None:
    if plan["mode"] == "burst":
        batch = chunked(TOKEN) * BATCH
        events = int(plan["events"])
        for _ in range(events // BATCH):
            writer.write(batch)
            await writer.drain()
        writer.write(chunked(TOKEN) * (events % BATCH))
    elif plan["mode"] == "paced":
        interval, end = 1 / plan["rate"], time.monotonic() + plan["seconds"]
        next_at = time.monotonic()
        while next_at < end:
            writer.write(chunked(stamped()))
            await writer.drain()
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    elif plan["mode"] == "lockstep":
        clock = CLOCKS.setdefault(plan["rate"], Lockstep(plan["rate"]))
        await clock.join(writer, plan["seconds"])
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
