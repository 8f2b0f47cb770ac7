"""A load client cheap enough to hold thousands of streams: raw sockets, an
incremental chunked decoder, frames counted rather than parsed.

    python bench/client.py URL STREAMS JSON_PLAN RESULT_FILE

The plan's "format" (chat, responses or messages; chat by default) picks the
route and the request body.

Writes one JSON object to RESULT_FILE (a file, not stdout: a pipe would
block a client whose result is large while another's is read): events
received, seconds, how long the streams took to open, and per mode the event
delays, arrival and send times (paced, lockstep) or the heartbeat gaps (idle).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from urllib.parse import urlsplit

# The token's text, stamped with its send time: chat's content, Responses' delta, Messages' text.
STAMP = re.compile(rb'"(?:content|delta|text)":"(\d+)"')
# The route and the request body of each format; the plan rides in the body's "bench" field.
ROUTES: dict[str, tuple[bytes, dict[str, object]]] = {
    "chat": (b"/v1/chat/completions", {"messages": []}),
    "responses": (b"/v1/responses", {"input": "bench"}),
    "messages": (b"/v1/messages", {"max_tokens": 1024, "messages": []}),
}
_CRLF_NEXT = -2  # a chunk's data is done; its CRLF comes next


class Dechunker:
    """Transfer-encoding: chunked, decoded as bytes arrive."""

    def __init__(self) -> None:
        self.buffer = b""
        self.left = 0  # bytes of the current chunk still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while self.buffer and not self.done:
            if self.left == _CRLF_NEXT:
                if len(self.buffer) < 2:
                    break
                self.buffer, self.left = self.buffer[2:], 0
                continue
            if self.left:
                piece = self.buffer[: self.left]
                out.append(piece)
                self.left -= len(piece)
                self.buffer = self.buffer[len(piece) :]
                if self.left == 0:
                    self.left = _CRLF_NEXT
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(self.buffer[:end].split(b";")[0], 16)
            self.buffer = self.buffer[end + 2 :]
            self.left, self.done = size, size == 0
        return b"".join(out)


def request(plan: dict[str, object]) -> bytes:
    """The streaming request of the plan's format (chat unless it says ``"format"``)."""
    path, fields = ROUTES[str(plan.get("format", "chat"))]
    body = json.dumps({"model": "bench", "stream": True, **fields, "bench": plan}).encode()
    return (
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
    )


async def one_stream(url: str, plan: dict[str, object], record: dict[str, list[float]], delay: float) -> int:
    await asyncio.sleep(delay)  # a ramp: thousands of connects at once would overflow the listen backlog
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request(plan))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    dechunk, events, tail, last = Dechunker(), 0, b"", time.monotonic()
    record["ready"].append(last)
    while not dechunk.done:
        data = await reader.read(65536)
        if not data:
            break
        now = time.monotonic()
        text = tail + dechunk.feed(data)
        frames = text.split(b"\n\n")
        tail = frames.pop()
        events += len(frames)
        if plan["mode"] in ("paced", "lockstep"):
            stamps = STAMP.findall(b"".join(frames))
            sent = [int(stamp) / 1e9 for stamp in stamps]
            record["sent"] += sent
            record["delays"] += [now - at for at in sent]
            record["arrivals"] += [now] * len(stamps)
        elif plan["mode"] == "idle" and frames:
            record["gaps"].append([last, now - last])  # when the silence began, and how long it was
            last = now
    writer.close()
    return events


async def counted(url: str, plan: dict[str, object], record: dict[str, list[float]], delay: float) -> int:
    """One stream's events; a failed stream is counted, not fatal to the run."""
    try:
        return await one_stream(url, plan, record, delay)
    except (OSError, RuntimeError, asyncio.IncompleteReadError) as error:
        record["errors"].append(repr(error))  # type: ignore[arg-type]
        return 0


async def run(url: str, streams: int, plan: dict[str, object]) -> dict[str, object]:
    record: dict[str, list[float]] = {
        "delays": [],
        "arrivals": [],
        "sent": [],
        "gaps": [],
        "ready": [],
        "errors": [],
    }
    ramp = float(plan.get("ramp", 0.0)) / streams  # type: ignore[arg-type]
    start = time.monotonic()
    counts = await asyncio.gather(*(counted(url, plan, record, n * ramp) for n in range(streams)))
    return {
        "events": sum(counts),
        "seconds": time.monotonic() - start,
        **record,
        "ready": max(record["ready"], default=start),
        "opened_in": max(record["ready"], default=start) - start,
    }


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    url, streams, plan, result_file = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    result = asyncio.run(run(url, streams, plan))
    with open(result_file, "w") as out:
        json.dump(result, out)
