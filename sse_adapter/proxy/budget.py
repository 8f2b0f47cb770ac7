"""A budget of bytes that concurrent work holds while it runs.

Counting a stream's tokens parses its request and holds the prompt's tokens
(README, "Reliability and security": some 26 times the request's size). A
budget of one ``--max-request-bytes`` shared by every count bounds what all
of them hold at once, however many streams end together: small requests are
counted side by side, a large one waits for room (within the count's own time
bound, past which its stream ends without usage).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["ByteBudget"]


class ByteBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._freed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most the whole budget) while the block runs."""
        size = min(max(size, 0), self.total)
        async with self._freed:
            await self._freed.wait_for(lambda: self.held + size <= self.total)
            self.held += size
        try:
            yield
        finally:
            async with self._freed:
                self.held -= size
                self._freed.notify_all()
