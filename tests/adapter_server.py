"""Runs the real app under uvicorn on a free port of 127.0.0.1, in the test's loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from sse_adapter.server import serving
from sse_adapter.settings import Settings


@contextlib.asynccontextmanager
async def run_adapter(settings: Settings) -> AsyncIterator[str]:
    """Yields the adapter's base URL while it serves."""
    quick = replace(settings, host="127.0.0.1", port=0, shutdown_grace=min(settings.shutdown_grace, 1.0))
    async with serving(quick) as url:
        yield url
