"""What the end client behind One-API sees of a stream, and when.

Reads a streaming response the way One-API would relay it (the rules of
:mod:`sse_adapter.tools.oneapi`) and keeps every frame with the time it would
reach the client. The demo and the tests judge streams with it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson

from sse_adapter.tools.oneapi import OneAPIRelay, accepts_stream

__all__ = ["EndClientView", "is_heartbeat", "read_through_one_api"]


@dataclass
class EndClientView:
    """One stream as the end client saw it through One-API."""

    status: int
    headers: httpx.Headers
    raw: bytes = b""  # exactly what the server wrote
    frames: list[tuple[float, bytes]] = field(default_factory=list)  # (seconds since the request, frame)
    reads: list[tuple[float, bytes]] = field(default_factory=list)  # what came off the socket, and when
    duration: float = 0.0

    @property
    def payloads(self) -> list[bytes]:
        return [frame.removeprefix(b"data: ").removesuffix(b"\n\n") for _, frame in self.frames]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The JSON chunks; raises if a frame is not JSON, as an OpenAI client would."""
        return [orjson.loads(payload) for payload in self.payloads if payload != b"[DONE]"]

    def text(self) -> str:
        parts: list[str] = []
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta")
                parts.append((delta.get("content") if delta else choice.get("text")) or "")
        return "".join(parts)

    def reasoning(self) -> str:
        return "".join(
            (choice.get("delta") or {}).get("reasoning_content") or ""
            for chunk in self.chunks
            for choice in chunk.get("choices") or []
        )

    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls as OpenAI clients build them: deltas merged by index,
        their strings concatenated. A delta with no index is an error, as in the openai SDK."""
        calls: dict[int, dict[str, Any]] = {}
        for chunk in self.chunks:
            for choice in chunk.get("choices") or []:
                for call in (choice.get("delta") or {}).get("tool_calls") or []:
                    if not isinstance(call.get("index"), int):
                        raise ValueError(f"a tool-call delta with no index: {call}")
                    into = calls.setdefault(
                        call["index"], {"id": "", "type": None, "name": "", "arguments": ""}
                    )
                    _accumulate(into, call)
        return [calls[index] for index in sorted(calls)]

    def finish_reason(self) -> str | None:
        """The last finish reason the stream gave."""
        reasons = [
            choice.get("finish_reason") for chunk in self.chunks for choice in chunk.get("choices") or []
        ]
        return next((reason for reason in reversed(reasons) if reason is not None), None)

    def usage(self) -> dict[str, Any] | None:
        """What One-API bills: the last non-null usage of the stream (shared/oneapi-relay.md)."""
        found = [chunk["usage"] for chunk in self.chunks if chunk.get("usage") is not None]
        return found[-1] if found else None

    def last_chunk_usage(self) -> dict[str, Any] | None:
        """What new-api bills: the usage of the last data chunk."""
        chunks = self.chunks
        return chunks[-1].get("usage") if chunks else None

    def errors(self) -> list[str]:
        """The error messages the client was shown: an error status's body, or in-band chunks."""
        if self.status != 200:
            try:
                body = orjson.loads(self.raw)
                return [str(body["error"]["message"])]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return [f"HTTP {self.status}"]
        return [
            str(chunk["error"].get("message"))
            for chunk in self.chunks
            if isinstance(chunk.get("error"), dict)
        ]

    def dones(self) -> int:
        return self.payloads.count(b"[DONE]")

    def heartbeats(self) -> int:
        return sum(map(is_heartbeat, self.chunks))

    def gaps(self) -> list[float]:
        """The silences the client lived through, the wait for the first frame included."""
        times = [0.0] + [at for at, _ in self.frames]
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def longest_silence(self) -> float:
        return max(self.gaps(), default=self.duration)


def _accumulate(into: dict[str, Any], call: dict[str, Any]) -> None:
    function = call.get("function") or {}
    for key, value in (
        ("id", call.get("id")),
        ("name", function.get("name")),
        ("arguments", function.get("arguments")),
    ):
        if isinstance(value, str):
            into[key] += value
    if "type" in call:
        into["type"] = call["type"]  # the SDK keeps the last type given, null too


def is_heartbeat(chunk: dict[str, Any]) -> bool:
    """A chunk that says nothing: one choice, empty text, no role, no finish."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or "error" in chunk or "usage" in chunk:
        return False
    choice = choices[0]
    return choice.get("finish_reason") is None and (
        choice.get("delta") == {"content": ""} or ("delta" not in choice and choice.get("text") == "")
    )


async def read_through_one_api(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> EndClientView:
    """POST a streaming request and read the answer as One-API's client would get it."""
    start = anyio.current_time()
    relay = OneAPIRelay(chat=url.endswith("/chat/completions"))
    async with client.stream("POST", url, json=body, headers=headers) as response:
        view = EndClientView(response.status_code, response.headers)
        relayed = accepts_stream(response.status_code, response.headers.get("content-type", ""))
        raw = bytearray()
        async for piece in response.aiter_raw():
            raw += piece
            now = anyio.current_time() - start
            view.reads.append((now, piece))
            if relayed:
                view.frames += [(now, frame) for frame in relay.feed(piece)]
    view.duration = anyio.current_time() - start
    if relayed:
        view.frames += [(view.duration, frame) for frame in relay.close()]
    view.raw = bytes(raw)
    return view
