"""Readiness: does the upstream answer? Asked of the model server itself,
and cached briefly so that probes every few seconds cost it nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sse_adapter.errors import AdapterError
from sse_adapter.proxy.upstream import Upstream

__all__ = ["Readiness"]

_TTL = 5.0  # seconds a verdict is reused
_TIMEOUT = 3.0
# TGI, vLLM, SGLang, llama.cpp and LocalAI answer /health; every OpenAI server answers /v1/models.
_PATHS = ("/health", "/v1/models")


@dataclass
class Readiness:
    upstream: Upstream
    _checked_at: float = float("-inf")
    _reason: str | None = None  # None: ready

    async def reason_not_ready(self) -> str | None:
        """None when the upstream answers; else why it does not."""
        now = asyncio.get_running_loop().time()
        if now - self._checked_at >= _TTL:
            self._reason = await self._check()
            self._checked_at = asyncio.get_running_loop().time()
        return self._reason

    async def _check(self) -> str | None:
        failures = []
        for path in _PATHS:
            url = self.upstream.base_url + path
            try:
                status = await self.upstream.get(path, _TIMEOUT)
            except TimeoutError:
                failures.append(f"{url}: no answer within {_TIMEOUT:g} s")
                continue
            except AdapterError as error:
                failures.append(error.message)  # it names the URL
                continue
            if 200 <= status < 300:
                return None
            failures.append(f"{url} answered {status}")
        return "the upstream does not answer: " + "; ".join(failures)
