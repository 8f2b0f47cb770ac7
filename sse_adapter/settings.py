"""Every setting in one frozen object, checked once when it is made."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HeartbeatMode", "Settings", "SettingsError"]


class HeartbeatMode(enum.StrEnum):
    """``chunk`` reaches the end client through One-API; ``comment`` keeps only
    the hop to the gateway alive (shared/keepalive.md)."""

    CHUNK = "chunk"
    COMMENT = "comment"
    OFF = "off"


class SettingsError(ValueError):
    """A setting that cannot work; the message names the flag and the fix."""


@dataclass(frozen=True, slots=True)
class Settings:
    upstream: str
    host: str = "127.0.0.1"
    port: int = 8000
    heartbeat_interval: float = 10.0
    heartbeat_mode: HeartbeatMode = HeartbeatMode.CHUNK
    connect_timeout: float = 10.0
    max_event_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "upstream", _base_url(self.upstream))
        try:
            object.__setattr__(self, "heartbeat_mode", HeartbeatMode(self.heartbeat_mode))
        except ValueError:
            choices = ", ".join(mode.value for mode in HeartbeatMode)
            raise SettingsError(
                f"--heartbeat-mode must be one of {choices}, got {self.heartbeat_mode!r}"
            ) from None
        if not 0 < self.port < 65536:
            raise SettingsError(f"--port must be between 1 and 65535, got {self.port}")
        if not self.heartbeat_interval > 0:
            raise SettingsError(
                f"--heartbeat-interval must be more than 0 seconds, got {self.heartbeat_interval}; "
                "use --heartbeat-mode off to send no heartbeats"
            )
        if not self.connect_timeout > 0:
            raise SettingsError(f"--connect-timeout must be more than 0 seconds, got {self.connect_timeout}")
        if self.max_event_bytes < 1024:
            raise SettingsError(f"--max-event-bytes must be at least 1024, got {self.max_event_bytes}")

    @property
    def heartbeats(self) -> bool:
        return self.heartbeat_mode is not HeartbeatMode.OFF


def _base_url(url: str) -> str:
    """The upstream's base URL, to which each request's own path is appended.

    One-API users often paste a base URL ending in ``/v1``; the paths we
    forward already start with ``/v1``, so a trailing one is dropped.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"--upstream must be an http:// or https:// URL such as http://127.0.0.1:8080, got {url!r}"
        )
    if parts.query or parts.fragment:
        raise SettingsError(f"--upstream must not have a query or fragment, got {url!r}")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"
