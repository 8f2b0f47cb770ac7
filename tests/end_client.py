"""The end client behind One-API: reads the adapter, pipes it through the
One-API double, and records what it would see and when."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import orjson

from sse_adapter.oneapi import LINE_LIMIT, OneAPIRelay

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Seen:
    """One stream as the end client saw it through One-API."""

    status: int
    headers: httpx.Headers
    raw: bytes = b""  # exactly what the adapter wrote
    frames: list[tuple[float, bytes]] = field(default_factory=list)  # (seconds since request, frame)

    @property
    def payloads(self) -> list[bytes]:
        return [frame.removeprefix(b"data: ").removesuffix(b"\n\n") for _, frame in self.frames]

    @property
    def chunks(self) -> list[dict[str, object]]:
        return [orjson.loads(payload) for payload in self.payloads if payload != b"[DONE]"]

    def text(self) -> str:
        parts: list[str] = []
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:  # type: ignore[attr-defined]
                delta = choice.get("delta")
                parts.append((delta.get("content") if delta else choice.get("text")) or "")
        return "".join(parts)

    def dones(self) -> int:
        return self.payloads.count(b"[DONE]")

    def gaps(self) -> list[float]:
        """Silences the end client lived through, the wait for the first frame included."""
        times = [0.0] + [at for at, _ in self.frames]
        return [later - earlier for earlier, later in itertools.pairwise(times)]


def assert_spec_clean(raw: bytes) -> None:
    """Only single-line ``data: `` frames, each ended by a blank line, LF only."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    for block in raw[:-2].split(b"\n\n"):
        assert block.startswith(b"data: "), block[:80]
        assert b"\n" not in block, block[:80]
        assert b"\r" not in block, block[:80]
        assert len(block) <= LINE_LIMIT


async def stream(base_url: str, path: str, body: dict[str, object]) -> Seen:
    """POST a streaming request and read it the way One-API's client would."""
    start = anyio.current_time()
    relay = OneAPIRelay(chat=path.endswith("/chat/completions"))
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", base_url + path, json=body) as response:
            seen = Seen(response.status_code, response.headers)
            raw = bytearray()
            async for piece in response.aiter_raw():
                raw += piece
                now = anyio.current_time() - start
                seen.frames += [(now, frame) for frame in relay.feed(piece)]
    now = anyio.current_time() - start
    seen.frames += [(now, frame) for frame in relay.close()]
    seen.raw = bytes(raw)
    return seen
