"""Runs the real app under uvicorn on a free port of 127.0.0.1, in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import uvicorn

from sse_adapter.app import create_app
from sse_adapter.settings import Settings


@contextlib.asynccontextmanager
async def run_adapter(settings: Settings) -> AsyncIterator[str]:
    """Yields the adapter's base URL while it serves."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = replace(settings, port=port)
    config = uvicorn.Config(
        create_app(settings), lifespan="on", log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces a start-up failure
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
