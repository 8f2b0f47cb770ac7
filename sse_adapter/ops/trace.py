"""``--trace-dir``: the exact bytes of each exchange, to inspect SSE framing.

Per request, named by its request id: ``<id>.upstream`` (the upstream's body
as it came), ``<id>.client`` (the exact bytes the client was sent) and
``<id>.json`` (statuses, redacted headers; the request body only with
``--trace-bodies``). Each file stops at ``MAX_BYTES`` (and says so in the
JSON); the folder keeps the newest ``MAX_REQUESTS`` requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "Trace"]

MAX_BYTES = 1024 * 1024
MAX_REQUESTS = 200
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie"}
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class Trace:
    folder: Path
    keep_bodies: bool
    method: str = ""
    path: str = ""
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: bytes = b""
    upstream: bytearray = field(default_factory=bytearray)
    client: bytearray = field(default_factory=bytearray)
    truncated: set[str] = field(default_factory=set)
    sizes: dict[str, int] = field(default_factory=lambda: {"upstream": 0, "client": 0})  # all, kept or not
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)
    outcome: str = "ok"

    def from_upstream(self, data: bytes) -> None:
        self._add(self.upstream, data, "upstream")

    def to_client(self, data: bytes) -> None:
        self._add(self.client, data, "client")

    def _add(self, into: bytearray, data: bytes, name: str) -> None:
        self.sizes[name] += len(data)
        room = MAX_BYTES - len(into)
        if len(data) > room:
            self.truncated.add(name)
        into += data[: max(room, 0)]

    async def save(self, request_id: str, status: int, upstream_status: int | None) -> None:
        await asyncio.to_thread(self._write, _UNSAFE.sub("_", request_id)[:100], status, upstream_status)

    def _write(self, name: str, status: int, upstream_status: int | None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "request": {
                "method": self.method,
                "path": self.path,
                "headers": [
                    (k, "[redacted]" if k.lower() in _SECRET_HEADERS else v) for k, v in self.request_headers
                ],
                "body": self.request_body.decode("utf-8", "replace")
                if self.keep_bodies
                else "[not kept: --trace-bodies]",
            },
            "status": status,
            "outcome": self.outcome,
            "upstream_status": upstream_status,
            "upstream_headers": [
                (k, "[redacted]" if k.lower() in _SECRET_HEADERS else v) for k, v in self.upstream_headers
            ],
            "bytes": dict(self.sizes),  # what passed, whether or not the file kept it all
            "truncated_at": {name: MAX_BYTES for name in sorted(self.truncated)},
        }
        (self.folder / f"{name}.json").write_text(json.dumps(meta, indent=2))
        (self.folder / f"{name}.upstream").write_bytes(self.upstream)
        (self.folder / f"{name}.client").write_bytes(self.client)
        _rotate(self.folder)


def _rotate(folder: Path) -> None:
    """Keep the newest MAX_REQUESTS requests: three files each.

    Requests finish in threads of their own, so another one's rotation may
    remove a file between the listing and the look at it: that is no error.
    """
    metas = []
    for path in folder.glob("*.json"):
        with contextlib.suppress(FileNotFoundError):
            metas.append((path.stat().st_mtime, path))
    metas.sort(reverse=True)
    for _, stale in metas[MAX_REQUESTS:]:
        for suffix in (".json", ".upstream", ".client"):
            stale.with_suffix(suffix).unlink(missing_ok=True)
