"""Running the app under uvicorn: as the service, or inside a running event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from sse_adapter.ops.logs import logging_config
from sse_adapter.proxy.app import create_app
from sse_adapter.proxy.protocol import GuardedProtocol
from sse_adapter.settings import Settings, SettingsError

__all__ = ["app_from_environment", "listening", "run_server", "serving"]

_SETTINGS_ENV = "SSE_ADAPTER_WORKER_SETTINGS"
_STOP_MARGIN = 5.0  # seconds past the grace that the in-loop server gets to stop


def _options(settings: Settings) -> dict[str, Any]:
    """What the adapter asks of uvicorn, whichever way it runs.

    The drain is uvicorn's own: on SIGTERM it stops accepting and waits
    ``--shutdown-grace`` for requests to finish, then cancels the rest; a
    stream cancelled so ends with an in-band ``shutting_down`` error.
    """
    return {
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.shutdown_grace,
        "http": partial(
            GuardedProtocol,
            read_timeout=settings.request_read_timeout,
            max_connections=settings.max_connections,
        ),
    }


def _config(settings: Settings, app: FastAPI | None = None, **options: Any) -> uvicorn.Config:
    app = app or create_app(settings)
    return uvicorn.Config(app, **_options(settings), **options)


def listening(host: str, port: int, flag: str = "--host, --port") -> socket.socket:
    """A bound socket, or a SettingsError that names the address and the flag."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SettingsError(
            f"cannot listen on {host}:{port} ({flag}): {error.strerror or error}; pick another port, "
            "or stop what listens there"
        ) from None
    return sock


def run_server(settings: Settings) -> None:
    """The service: uvicorn with uvloop and httptools.

    Every mistake that would stop it is found before it starts, each a
    SettingsError of one line. With several workers uvicorn starts each in
    its own process from an app factory, so the settings travel to them as
    JSON in the environment.
    """
    _check_folder(settings.trace_dir, "--trace-dir")
    logs: dict[str, Any] = {
        "log_config": logging_config(
            settings.log_format.value, settings.log_level, settings.access_log_probes
        ),
        "access_log": False,
    }
    made = _metrics_folder() if settings.workers > 1 else None
    sock = listening(settings.host, settings.port)
    if settings.workers == 1:
        uvicorn.Server(_config(settings, None, **logs)).run(sockets=[sock])
        return
    os.environ[_SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    config = uvicorn.Config(
        f"{__name__}:app_from_environment",
        factory=True,
        workers=settings.workers,
        **_options(settings),
        **logs,
    )
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def _check_folder(folder: str | None, flag: str) -> None:
    """A folder the adapter writes to must be writable now, not fail every request later."""
    if folder is None:
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise SettingsError(f"{flag} {folder!r} cannot be written: {error.strerror or error}") from None


def _metrics_folder() -> str | None:
    """With several workers each counts its metrics into files there, and
    /metrics sums them (prometheus-client's multiprocess mode). The folder
    this makes (not one the user gave) goes when the adapter stops."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        _check_folder(given, "PROMETHEUS_MULTIPROC_DIR")
        return None
    try:
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sse-adapter-metrics-")
    except OSError as error:
        raise SettingsError(
            "--workers keeps its metrics in files and cannot make a folder for them in "
            f"{tempfile.gettempdir()!r}: {error.strerror or error}; "
            "set PROMETHEUS_MULTIPROC_DIR to a writable folder (in Kubernetes, an emptyDir volume)"
        ) from None
    return made


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
    sock = listening(settings.host, settings.port, "--port")
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
