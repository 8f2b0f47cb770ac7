"""An embedded fake model server that streams exactly like real ones.

It serves the transcripts shipped in ``sse_adapter/tools/transcripts``,
picked by the request's ``model``, event by event, with chunked transfer
encoding: for chat the recorded ones (the same bytes as ``tests/fixtures``),
on ``/v1/responses`` and ``/v1/messages`` streams written to each format's
spec (shared/formats.md), one clean, one silent, one cut and one failing
each. Raw asyncio, so the bytes on the wire are exactly the transcript's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from sse_adapter.repair.format import Format
from sse_adapter.settings import SettingsError
from sse_adapter.tools.agentclient import PATHS

__all__ = ["DIALECTS", "DemoDialect", "demo_upstream", "events_of", "transcript"]

_EVENT_END = re.compile(rb"(?<=\r\n\r\n)|(?<=\n\n)|(?<=\r\r)(?!\n)")
_PACE = 0.02  # seconds between events, as a model generating quickly
_OOM = "CUDA error: out of memory"


@dataclass(frozen=True, slots=True)
class DemoDialect:
    name: str
    transcript: str
    about: str
    text: str  # what the user should read
    error: str | None = None  # the upstream's own error message the user should be shown
    thinks: bool = False  # silent for --think-seconds before the first token
    calls: tuple[tuple[str, str], ...] = ()  # the tool calls made: (name, arguments)
    form: Format = Format.CHAT  # the route it is served on
    silent_after: int = 0  # how many events come before the silence, when it thinks
    cut: bool = False  # the connection is cut after the transcript: the body never ends
    fails: bool = False  # the stream fails without a word: the client must see it did

    @property
    def path(self) -> str:
        return PATHS[self.form]

    @property
    def failure(self) -> bool:
        """The client must be told the stream failed."""
        return self.fails or self.error is not None


DIALECTS: Mapping[str, DemoDialect] = {
    dialect.name: dialect
    for dialect in (
        DemoDialect(
            "tgi-2.0", "tgi-2.0.sse", "TGI <= 2.0: `data:` with no space, no [DONE]", "Hello from TGI!"
        ),
        DemoDialect(
            "xinference",
            "xinference-error.sse",
            "Xinference: CRLF line ends, then a string error and no [DONE]",
            "Partial",
            error="[address=0.0.0.0:38451, pid=1234] CUDA error: out of memory",
        ),
        DemoDialect(
            "llamacpp-legacy",
            "llamacpp-legacy-error.sse",
            "llama.cpp before Sep 2025: a bare `error:` line, which is not SSE",
            "Partial",
            error="context shift is disabled",
        ),
        DemoDialect(
            "vllm", "vllm.sse", "vLLM: clean SSE, a usage chunk with no choices", "The answer is 42."
        ),
        DemoDialect(
            "tools",
            "vllm-named-tool.sse",
            "vLLM 0.6 with a named tool_choice: the name on every delta, no call id, `stop` to finish",
            "",
            calls=(("get_weather", '{"city": "Paris"}'),),
        ),
        DemoDialect(
            "reasoning",
            "reasoning.sse",
            "a reasoning model: silent while it thinks, then `delta.reasoning`",
            "It is 42.",
            thinks=True,
        ),
        DemoDialect(
            "responses-clean",
            "responses-clean.sse",
            "Responses: typed events numbered from 0, usage in response.completed",
            "The answer is 42.",
            form=Format.RESPONSES,
        ),
        DemoDialect(
            "responses-thinking",
            "responses-thinking.sse",
            "Responses: response.created at once, then silent while the model thinks",
            "It is 42.",
            form=Format.RESPONSES,
            thinks=True,
            silent_after=2,
        ),
        DemoDialect(
            "responses-cut",
            "responses-cut.sse",
            "Responses: the server stops mid-answer, with no response.completed",
            "Partial",
            form=Format.RESPONSES,
            fails=True,
        ),
        DemoDialect(
            "responses-error",
            "responses-error.sse",
            "Responses: an `error` event mid-answer (Codex drops its message), then the end",
            "Partial",
            error=_OOM,
            form=Format.RESPONSES,
        ),
        DemoDialect(
            "messages-clean",
            "messages-clean.sse",
            "Messages: message_start to message_stop, usage in both",
            "The answer is 42.",
            form=Format.MESSAGES,
        ),
        DemoDialect(
            "messages-silent",
            "messages-silent.sse",
            "Messages: nothing at all until the first token, as vLLM while a request waits",
            "It is 42.",
            form=Format.MESSAGES,
            thinks=True,
        ),
        DemoDialect(
            "messages-cut",
            "messages-cut.sse",
            "Messages: the connection cut mid-answer, no message_stop",
            "Partial",
            form=Format.MESSAGES,
            cut=True,
            fails=True,
        ),
        DemoDialect(
            "messages-error",
            "messages-error.sse",
            "Messages: `event: error` with an OpenAI-shaped body (no `type`), then the end",
            "Partial",
            error=_OOM,
            form=Format.MESSAGES,
        ),
    )
}


def transcript(dialect: DemoDialect) -> bytes:
    return resources.files("sse_adapter.tools").joinpath("transcripts", dialect.transcript).read_bytes()


def events_of(body: bytes) -> list[bytes]:
    """The transcript cut after each blank line: one piece per event, bytes unchanged."""
    return [piece for piece in _EVENT_END.split(body) if piece]


@dataclass
class _DemoServer:
    think_seconds: float

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, body = await _read_request(reader)
            await self._answer(writer, method, path, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left: nothing to answer
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes) -> None:
        if method == "GET" and path.startswith("/v1/models"):
            models = {"object": "list", "data": [{"id": name, "object": "model"} for name in DIALECTS]}
            await _json(writer, 200, orjson.dumps(models))
            return
        request = orjson.loads(body) if body else {}
        dialect = DIALECTS.get(request.get("model", "")) if isinstance(request, dict) else None
        if dialect is None or dialect.path != path:
            served = [name for name, known in DIALECTS.items() if known.path == path] or list(DIALECTS)
            message = f"the demo serves {path} with a model of: {', '.join(served)}"
            await _json(writer, 400, _error_body(path, message, "invalid_request_error"))
        elif request.get("stream") is True:
            await self._stream(writer, dialect)
        elif not dialect.cut:  # One-API's channel Test, the SDK's plain call
            await _json(writer, *_whole_answer(dialect))
        # a server that cuts its streams cuts its whole answers too: the connection just closes

    async def _stream(self, writer: asyncio.StreamWriter, dialect: DemoDialect) -> None:
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        writer.write((head + "Connection: close\r\n\r\n").encode())
        await writer.drain()
        for number, event in enumerate(events_of(transcript(dialect))):
            if dialect.thinks and number == dialect.silent_after:
                await asyncio.sleep(self.think_seconds)
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(_PACE)
        if not dialect.cut:
            writer.write(b"0\r\n\r\n")
            await writer.drain()


def _error_body(path: str, message: str, kind: str) -> bytes:
    """An error in the shape of the route's clients: Anthropic's on /v1/messages."""
    if path == PATHS[Format.MESSAGES]:
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return orjson.dumps({"error": {"message": message, "type": kind, "code": None}})


def _whole_answer(dialect: DemoDialect) -> tuple[int, bytes]:
    """The non-stream answer that tells the same story as the dialect's stream."""
    if dialect.failure:
        said = dialect.error or "the model server stopped mid-answer"
        kind = "api_error" if dialect.form is Format.MESSAGES else "server_error"
        return 500, _error_body(dialect.path, said, kind)
    if dialect.form is Format.RESPONSES:
        return 200, orjson.dumps(_whole_response(dialect))
    if dialect.form is Format.MESSAGES:
        return 200, orjson.dumps(_whole_message(dialect))
    message: dict[str, object] = {"role": "assistant", "content": dialect.text}
    if dialect.calls:
        message["tool_calls"] = [
            {"id": f"call_demo{n}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for n, (name, arguments) in enumerate(dialect.calls)
        ]
    finish = "tool_calls" if dialect.calls else "stop"
    return 200, orjson.dumps(
        {
            "id": f"chatcmpl-demo-{dialect.name}",
            "object": "chat.completion",
            "created": 1718000000,
            "model": dialect.name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
        }
    )


def _whole_response(dialect: DemoDialect) -> dict[str, Any]:
    part = {"type": "output_text", "text": dialect.text, "annotations": []}
    item: dict[str, Any] = {"id": "msg_demo", "type": "message", "role": "assistant", "status": "completed"}
    item["content"] = [part]
    return {
        "id": f"resp_demo_{dialect.name.replace('-', '_')}",
        "object": "response",
        "created_at": 1767225600,
        "status": "completed",
        "model": dialect.name,
        "output": [item],
        "usage": {"input_tokens": 12, "output_tokens": 6, "total_tokens": 18},
    }


def _whole_message(dialect: DemoDialect) -> dict[str, Any]:
    return {
        "id": f"msg_demo_{dialect.name.replace('-', '_')}",
        "type": "message",
        "role": "assistant",
        "model": dialect.name,
        "content": [{"type": "text", "text": dialect.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    start, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = start.split(" ", 2)
    length = next(
        (int(v) for n, _, v in (x.partition(":") for x in lines) if n.lower() == "content-length"), 0
    )
    return method, path, await reader.readexactly(length) if length else b""


async def _json(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write((head + "Connection: close\r\n\r\n").encode() + body)
    await writer.drain()


@contextlib.asynccontextmanager
async def demo_upstream(think_seconds: float, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the demo dialects; yields the server's base URL."""
    try:
        server = await asyncio.start_server(_DemoServer(think_seconds).serve, host, port)
    except OSError as error:
        raise SettingsError(
            f"cannot listen on {host}:{port} (the demo's model server takes the port after --port): "
            f"{error.strerror or error}; pick another --port"
        ) from None
    bound = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)
