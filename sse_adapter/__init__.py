"""sse-adapter: any model server's stream, out as SSE that One-API relays intact."""

from __future__ import annotations

from sse_adapter.errors import AdapterError
from sse_adapter.settings import HeartbeatMode, Settings
from sse_adapter.sse.decoder import Event, SSEDecoder

__all__ = ["AdapterError", "Event", "HeartbeatMode", "SSEDecoder", "Settings", "__version__"]

__version__ = "0.1.0"
