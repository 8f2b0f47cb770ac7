"""Runs the real app under uvicorn on a free port of 127.0.0.1, in the test's loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from sse_adapter.app import serving
from sse_adapter.settings import Settings


@contextlib.asynccontextmanager
async def run_adapter(settings: Settings) -> AsyncIterator[str]:
    """Yields the adapter's base URL while it serves."""
    async with serving(replace(settings, host="127.0.0.1", port=0)) as url:
        yield url
