"""The SSE codec, pure (sans-I/O): bytes to events, and payloads to frames."""
