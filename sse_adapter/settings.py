"""Every setting in one frozen object, checked once when it is made."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sse_adapter.repair.request import NEVER_DROPPED, ModelAlias

__all__ = [
    "HeartbeatMode",
    "LogFormat",
    "MessagesHeartbeat",
    "ReasoningField",
    "ResponsesHeartbeat",
    "Settings",
    "SettingsError",
    "StreamUsage",
    "Tags",
    "ThinkTags",
    "ToolCallMode",
    "shown_url",
]


class HeartbeatMode(enum.StrEnum):
    """``chunk`` reaches the end client through One-API; ``comment`` keeps only
    the hop to the gateway alive (shared/keepalive.md)."""

    CHUNK = "chunk"
    COMMENT = "comment"
    OFF = "off"


class ResponsesHeartbeat(enum.StrEnum):
    """``keepalive``: a typed event, the only heartbeat Codex's idle timer
    counts; ``comment`` never sends a typed event the upstream did not."""

    KEEPALIVE = "keepalive"
    COMMENT = "comment"
    OFF = "off"


class MessagesHeartbeat(enum.StrEnum):
    """``ping``: Anthropic's own ``event: ping``, which new-api relays (it drops comments)."""

    PING = "ping"
    COMMENT = "comment"
    OFF = "off"


class ReasoningField(enum.StrEnum):
    """The one delta field reasoning text is given under, whatever the server used."""

    REASONING_CONTENT = "reasoning_content"
    REASONING = "reasoning"
    KEEP = "keep"
    THINK_TAGS = "think-tags"  # in content, inside <think>...</think>, for clients that show only content
    # under both names: vLLM now sends only `reasoning`, and some clients read only `reasoning_content`
    BOTH = "both"


class Tags(enum.StrEnum):
    """What becomes of tagged text in content (``<think>``, ``<tool_call>``)."""

    SPLIT = "split"
    KEEP = "keep"


ThinkTags = Tags


class ToolCallMode(enum.StrEnum):
    NORMALISE = "normalise"
    KEEP = "keep"


class StreamUsage(enum.StrEnum):
    """``ask``: every stream asks the upstream for its usage (One-API bills
    from it); ``ask-keep-client``: asks too, but a client that said
    ``include_usage: false`` gets none; ``pass``: as the client asked."""

    ASK = "ask"
    ASK_KEEP_CLIENT = "ask-keep-client"
    PASS = "pass"

    @property
    def asks(self) -> bool:
        """The adapter asks the upstream for usage on every stream."""
        return self is not StreamUsage.PASS


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class SettingsError(ValueError):
    """A setting that cannot work; the message names the flag and the fix."""


@dataclass(frozen=True, slots=True)
class Settings:
    upstream: str
    host: str = "127.0.0.1"
    port: int = 8000
    heartbeat_interval: float = 10.0
    heartbeat_mode: HeartbeatMode = HeartbeatMode.CHUNK
    responses_heartbeat: ResponsesHeartbeat = ResponsesHeartbeat.KEEPALIVE
    messages_heartbeat: MessagesHeartbeat = MessagesHeartbeat.PING
    status_hold: float | None = None  # None: one heartbeat interval
    connect_timeout: float = 10.0
    first_byte_timeout: float = 600.0
    idle_timeout: float = 300.0
    total_timeout: float = 0.0  # 0: none
    max_request_bytes: int = 20 * 1024 * 1024
    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024
    request_read_timeout: float = 30.0
    max_connections: int = 10_000
    max_event_bytes: int = 16 * 1024 * 1024
    max_concurrent_streams: int = 0  # 0: no limit
    api_keys: tuple[str, ...] = ()
    upstream_api_key: str | None = None
    shutdown_grace: float = 30.0
    workers: int = 1
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "info"
    trace_dir: str | None = None
    trace_bodies: bool = False
    access_log_probes: bool = False  # /healthz, /readyz and /metrics hits in the access log
    # chunk normalisation: the defaults are what One-API and OpenAI clients need
    map_finish_reason: bool = True
    fill_fields: bool = True
    reasoning_field: ReasoningField = ReasoningField.REASONING_CONTENT
    think_tags: Tags = Tags.KEEP
    tool_calls: ToolCallMode = ToolCallMode.NORMALISE
    tool_call_tags: Tags = Tags.KEEP
    final_usage_only: bool = True
    drop_non_chunks: bool = True
    max_line_bytes: int = 65000
    # requests
    stream_usage: StreamUsage = StreamUsage.ASK
    drop_fields: tuple[str, ...] = ()
    models: tuple[ModelAlias, ...] = ()
    # non-streaming requests
    nonstream_keepalive: bool = False  # see README: it helps only with a proxy before the gateway
    nonstream_via_stream: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "upstream", _base_url(self.upstream))
        object.__setattr__(self, "api_keys", tuple(self.api_keys))  # JSON brings a list
        object.__setattr__(self, "drop_fields", _field_names(self.drop_fields))
        object.__setattr__(self, "models", tuple(_alias(model) for model in self.models))
        self._coerce("stream_usage", StreamUsage)
        self._coerce("heartbeat_mode", HeartbeatMode)
        self._coerce("responses_heartbeat", ResponsesHeartbeat)
        self._coerce("messages_heartbeat", MessagesHeartbeat)
        self._coerce("reasoning_field", ReasoningField)
        self._coerce("think_tags", Tags)
        self._coerce("tool_calls", ToolCallMode)
        self._coerce("tool_call_tags", Tags)
        self._coerce("log_format", LogFormat)
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise SettingsError(
                f"--log-level must be debug, info, warning, error or critical, got {self.log_level!r}"
            )
        if not 0 <= self.port < 65536:  # 0: any free port, for the demo and the tests
            raise SettingsError(f"--port must be between 1 and 65535, got {self.port}")
        if not self.heartbeat_interval > 0:
            raise SettingsError(
                f"--heartbeat-interval must be more than 0 seconds, got {self.heartbeat_interval}; "
                "use --heartbeat-mode off to send no heartbeats"
            )
        for flag, seconds in (
            ("--request-read-timeout", self.request_read_timeout),
            ("--connect-timeout", self.connect_timeout),
            ("--first-byte-timeout", self.first_byte_timeout),
            ("--idle-timeout", self.idle_timeout),
        ):
            if not seconds > 0:
                raise SettingsError(f"{flag} must be more than 0 seconds, got {seconds}")
        for flag, amount in (
            ("--total-timeout", self.total_timeout),
            ("--max-concurrent-streams", self.max_concurrent_streams),
            ("--shutdown-grace", self.shutdown_grace),
        ):
            if amount < 0:
                raise SettingsError(f"{flag} must be 0 or more (0: off), got {amount}")
        if self.status_hold is not None and self.status_hold < 0:
            raise SettingsError(f"--status-hold must be 0 or more seconds, got {self.status_hold}")
        if self.max_connections < 1:
            raise SettingsError(f"--max-connections must be 1 or more, got {self.max_connections}")
        if self.workers < 1:
            raise SettingsError(f"--workers must be 1 or more, got {self.workers}")
        if self.max_header_count < 16:
            raise SettingsError(f"--max-header-count must be at least 16, got {self.max_header_count}")
        if self.max_header_bytes < 4096:
            raise SettingsError(f"--max-header-bytes must be at least 4096, got {self.max_header_bytes}")
        if self.max_request_bytes < 1024:
            raise SettingsError(f"--max-request-bytes must be at least 1024, got {self.max_request_bytes}")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise SettingsError("--api-key must not be empty or start or end with spaces")
        if self.max_event_bytes < 1024:
            raise SettingsError(f"--max-event-bytes must be at least 1024, got {self.max_event_bytes}")
        if not 1024 <= self.max_line_bytes <= 65535:
            raise SettingsError(
                "--max-line-bytes must be between 1024 and 65535 (One-API's limit), "
                f"got {self.max_line_bytes}"
            )

    def _coerce(self, name: str, kind: type[enum.StrEnum]) -> None:
        """Accept the plain strings env and callers give; refuse what is not a choice."""
        value = getattr(self, name)
        try:
            object.__setattr__(self, name, kind(value))
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            flag = "--" + name.replace("_", "-")
            raise SettingsError(f"{flag} must be one of {choices}, got {value!r}") from None

    @property
    def heartbeats(self) -> bool:
        return self.heartbeat_mode is not HeartbeatMode.OFF

    @property
    def hold(self) -> float:
        """How long the status waits for the upstream before the 200 goes out."""
        return self.heartbeat_interval if self.status_hold is None else self.status_hold


def _field_names(names: tuple[str, ...] | str) -> tuple[str, ...]:
    """--drop-fields: a comma list or a list; the fields a request needs are refused."""
    listed = names.split(",") if isinstance(names, str) else names
    fields = tuple(name.strip() for name in listed if name.strip())
    needed = sorted(NEVER_DROPPED.intersection(fields))
    if needed:
        raise SettingsError(
            f"--drop-fields cannot drop {', '.join(needed)}: no request works without "
            f"{', '.join(sorted(NEVER_DROPPED))}"
        )
    return fields


def _alias(model: ModelAlias | Mapping[str, Any]) -> ModelAlias:
    """A model alias; from JSON (a worker's settings), a plain mapping."""
    if isinstance(model, ModelAlias):
        return model
    return ModelAlias(**{**model, "drop": tuple(model.get("drop", ()))})


_ENDPOINTS = ("/chat/completions", "/completions", "/embeddings", "/models")


def _base_url(url: str) -> str:
    """The upstream's base URL, to which each request's own path is appended.

    One-API users often paste a base URL ending in ``/v1``; the paths we
    forward already start with ``/v1``, so a trailing one is dropped. A full
    endpoint URL is refused: every request would go to it with its own path
    appended again.
    """
    parts = urlsplit(url.strip())
    shown = repr(shown_url(url.strip()))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"--upstream must be an http:// or https:// URL such as http://127.0.0.1:8080, got {shown}"
        )
    if parts.query or parts.fragment:
        raise SettingsError(f"--upstream must not have a query or fragment, got {shown}")
    path = parts.path.rstrip("/")
    endpoint = next((name for name in _ENDPOINTS if path.endswith(name)), None)
    if endpoint is not None:
        base = shown_url(f"{parts.scheme}://{parts.netloc}{path.removesuffix(endpoint).removesuffix('/v1')}")
        raise SettingsError(
            f"--upstream must be the model server's base URL, not an endpoint: got {shown}; use {base!r} "
            "(each request's own path, such as /v1/chat/completions, is appended to it)"
        )
    path = path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


def shown_url(url: str) -> str:
    """A URL fit to show in a message or a log: without the ``user:password@`` it may carry."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()
