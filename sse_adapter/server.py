"""Running the app under uvicorn: as the service, or inside a running event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from sse_adapter.app import create_app
from sse_adapter.logs import logging_config
from sse_adapter.settings import Settings

__all__ = ["app_from_environment", "run_server", "serving"]

_SETTINGS_ENV = "SSE_ADAPTER_WORKER_SETTINGS"
_STOP_MARGIN = 5.0  # seconds past the grace that the in-loop server gets to stop


def _drain(settings: Settings) -> dict[str, object]:
    """The drain, by uvicorn's own signalling: on SIGTERM it stops accepting and
    waits ``--shutdown-grace`` for requests to finish, then cancels the rest;
    a stream cancelled so ends with an in-band ``shutting_down`` error."""
    return {"lifespan": "on", "timeout_graceful_shutdown": settings.shutdown_grace}


def _config(settings: Settings, app: FastAPI | None = None, **options: object) -> uvicorn.Config:
    app = app or create_app(settings)
    return uvicorn.Config(app, **_drain(settings), **options)  # type: ignore[arg-type]


def run_server(settings: Settings) -> None:
    """The service: uvicorn picks uvloop and httptools when they are installed.

    With several workers uvicorn starts each in its own process from an app
    factory, so the settings travel to them as JSON in the environment.
    """
    logs = {"log_config": logging_config(settings.log_format.value, settings.log_level), "access_log": False}
    if settings.workers == 1:
        uvicorn.Server(_config(settings, None, host=settings.host, port=settings.port, **logs)).run()
        return
    os.environ[_SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    # Each worker counts into files here; /metrics sums them (prometheus-client's multiprocess mode).
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sse-adapter-metrics-"))
    uvicorn.run(
        f"{__name__}:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        **_drain(settings),  # type: ignore[arg-type]
        **logs,  # type: ignore[arg-type]
    )


def app_from_environment() -> FastAPI:
    """A worker's app, from the settings its supervisor left in the environment."""
    return create_app(Settings(**json.loads(os.environ[_SETTINGS_ENV])))


@asynccontextmanager
async def serving(
    settings: Settings, log_level: str = "warning", app: FastAPI | None = None
) -> AsyncIterator[str]:
    """Serve the adapter inside the running event loop; yields its base URL.

    Binds ``settings.host`` on ``settings.port``, or on a free port when it is 0.
    For the demo and the tests, which run their own clients beside it; a test
    that looks inside the app passes the one it made with ``create_app``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(settings, app, log_level=log_level))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces a start-up failure
            await asyncio.sleep(0.01)
        yield f"http://{settings.host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, settings.shutdown_grace + _STOP_MARGIN)
        sock.close()
