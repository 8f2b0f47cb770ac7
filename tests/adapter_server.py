"""Runs the real app under uvicorn on a free port of 127.0.0.1, in the test's loop."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import FastAPI

from sse_adapter.server import serving
from sse_adapter.settings import Settings

# Seconds a server started as its own process gets to answer, a hang guard: the interpreter's
# start with the adapter's imports takes 1 s on an idle machine and took over 20 s at a load of
# 20 on 2 cores.
STARTUP = 60.0


def _picked_from() -> range:
    """Ports the kernel never hands out by itself.

    A port bound to 0, and the local end of every outgoing connection, come from
    ``ip_local_port_range`` (32768-60999 by default). Tests run in parallel open thousands
    of connections; a port picked from that range for a server in another process could
    be taken by one of them before the server binds it. Below the range it cannot.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            low = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, low) if low > 12000 else range(0)


_PICK = _picked_from()
_RANDOM = random.SystemRandom()  # not the random module's: hypothesis seeds that in each worker


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on, for a server started as its own process."""
    for _ in range(100 if _PICK else 0):
        port = _RANDOM.choice(_PICK)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as sock:  # a kernel that hands out every port: any free one
        sock.bind(("127.0.0.1", 0))
        any_port: int = sock.getsockname()[1]
    return any_port


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
