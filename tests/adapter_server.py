"""Runs the real app under uvicorn on a free port of 127.0.0.1, in the test's loop."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import FastAPI

from sse_adapter.server import serving
from sse_adapter.settings import Settings


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on, for a server started as its own process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def free_port_pair() -> int:
    """A port whose next one is free too: the demo puts its model server there."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as after:
            try:
                after.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free ports side by side on 127.0.0.1")


@contextlib.asynccontextmanager
async def run_adapter(settings: Settings, app: FastAPI | None = None) -> AsyncIterator[str]:
    """Yields the adapter's base URL while it serves (``app``, when a test made its own)."""
    quick = replace(settings, host="127.0.0.1", port=0, shutdown_grace=min(settings.shutdown_grace, 1.0))
    async with serving(quick, app=app) as url:
        yield url
