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
    detail: str | None = None  # the addresses and the library's words behind the reason, for the log

    async def reason_not_ready(self) -> str | None:
        """None when the upstream answers; else why it does not (``detail``: for the log only)."""
        now = asyncio.get_running_loop().time()
        if now - self._checked_at >= _TTL:
            self._reason, self.detail = await self._check()
            self._checked_at = asyncio.get_running_loop().time()
        return self._reason

    async def _check(self) -> tuple[str | None, str | None]:
        failures: dict[str, list[str]] = {}  # each reason once, with the paths that gave it
        details = []
        for path in _PATHS:
            try:
                status = await self.upstream.get(path, _TIMEOUT)
            except TimeoutError:
                failures.setdefault(f"no answer within {_TIMEOUT:g} s", []).append(path)
                continue
            except AdapterError as error:
                failures.setdefault(error.message, []).append(path)
                details += [error.detail] if error.detail else []
                continue
            if 200 <= status < 300:
                return None, None
            failures.setdefault(f"answered {status}", []).append(path)
        said = "; ".join(f"{' and '.join(paths)}: {reason}" for reason, paths in failures.items())
        return "the upstream does not answer: " + said, "; ".join(details) or None
