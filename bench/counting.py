"""What counting a stream's usage costs: the time it adds before ``[DONE]``, and the memory it holds.

    .venv/bin/python bench/counting.py [--streams 100] [--fixture vllm-plain]

A fake upstream in this process replays a live recording (tests/fixtures/tokenize/): the
stream without its usage, so the adapter (the CLI, as users run it) counts it with the
recorded tokenizer answers the fake serves too; then the same stream with the usage the
server sent, which the adapter relays as it came. For each stream, one after another, the
time from the upstream's last byte to the client's ``[DONE]`` (one clock: both ends are in
this process); the counting's cost is the first figure against the second.

The memory a counted stream holds: what the repairer keeps for counting
(repair/turns.py), measured with tracemalloc while the recorded stream is repaired with
and without it, per stream and per content delta.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from procs import free_port, process, wait_for_port  # noqa: E402

from sse_adapter.repair.chunks import Kind, StreamIdentity  # noqa: E402
from sse_adapter.repair.stream import StreamRepairer  # noqa: E402
from sse_adapter.settings import Settings  # noqa: E402
from sse_adapter.sse.decoder import Event  # noqa: E402
from tests.tokenize_fake import answers, fixture, stripped  # noqa: E402

PY = sys.executable


class Upstream:
    """The recorded server: each stream's last byte is timed as it is written."""

    def __init__(self, stem: str) -> None:
        recorded = fixture(stem)
        self.with_usage = recorded["exchanges"][0]["answer"].encode()
        self.without_usage = stripped(recorded["exchanges"][0]["answer"])
        self.table = answers(stem.split("-", 1)[0])
        self.send_usage = False
        self.last_byte = 0.0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            _, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            length = next(
                (
                    int(line[15:])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            body = await reader.readexactly(length) if length else b""
            if target.endswith("/chat/completions"):
                await self._stream(writer)
            else:
                key = (
                    target.encode()
                    + b" "
                    + orjson.dumps(orjson.loads(body or b"null"), option=orjson.OPT_SORT_KEYS)
                )
                status, answer = self.table.get(key, (404, b"{}"))
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n" % status)
                writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n")
        writer.write(b"Connection: close\r\n\r\n")
        body = self.with_usage if self.send_usage else self.without_usage
        for event in body.split(b"\n\n")[:-1]:
            writer.write(b"%x\r\n%s\n\n\r\n" % (len(event) + 2, event))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.last_byte = time.monotonic()


async def added_times(url: str, upstream: Upstream, request: dict[str, Any], streams: int) -> list[float]:
    """For each stream, one after another: the upstream's last byte to the client's [DONE]."""
    found = []
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(streams):
            async with http.stream("POST", url + "/v1/chat/completions", json=request) as answer:
                seen = b""
                async for piece in answer.aiter_raw():
                    seen = seen[-32:] + piece
                    if b"data: [DONE]" in seen:
                        found.append(time.monotonic() - upstream.last_byte)
            if b'"usage"' not in seen and upstream.send_usage:
                raise RuntimeError("the adapter relayed no usage")
    return found


def held_per_stream(stem: str) -> dict[str, float]:
    """The bytes the repairer keeps to count the recorded stream, by tracemalloc."""
    events = [
        Event(data=part[6:].decode())
        for part in stripped(fixture(stem)["exchanges"][0]["answer"]).split(b"\n\n")
        if part.startswith(b"data: ")
    ]
    sizes = []
    for collect in (False, True):
        tracemalloc.start()
        repairer = StreamRepairer(
            StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://127.0.0.1:1"), collect_text=collect
        )
        for event in events:
            repairer.repair(event)
        sizes.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.stop()
        del repairer
    deltas = sum(1 for event in events if '"content"' in event.data)
    held = sizes[1] - sizes[0]
    return {"bytes_per_stream": held, "content_deltas": deltas, "bytes_per_delta": held / max(deltas, 1)}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


async def measure(stem: str, streams: int) -> dict[str, Any]:
    upstream = Upstream(stem)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    port = free_port()
    command = [PY, "-m", "sse_adapter", "serve", "--upstream", f"http://127.0.0.1:{up_port}"]
    request = fixture(stem)["request"]
    with process(*command, "--port", str(port), "--log-level", "warning") as adapter:
        await asyncio.to_thread(wait_for_port, port, adapter)
        url = f"http://127.0.0.1:{port}"
        counted = await added_times(url, upstream, request, streams)
        upstream.send_usage = True
        relayed = await added_times(url, upstream, request, streams)
    server.close()
    return {"counted": percentiles(counted), "server_usage": percentiles(relayed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--fixture", default="vllm-plain", help="a recording in tests/fixtures/tokenize/")
    args = parser.parse_args()
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "fixture": args.fixture,
        "streams": args.streams,
        "last_byte_to_done": asyncio.run(measure(args.fixture, args.streams)),
        "held": held_per_stream(args.fixture),
    }
    print(json.dumps(report, indent=1))
    out = HERE / "results" / f"counting-{args.fixture}-{report['when'][:10]}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
