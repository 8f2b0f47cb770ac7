"""The chunks sse-adapter writes itself: heartbeats and in-band errors (pure).

Both must reach the END client through One-API, which forwards a chat chunk
only when its ``choices`` is non-empty (shared/oneapi-relay.md, "What
follows"), so each carries one choice with empty text.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from sse_adapter.errors import AdapterError

__all__ = ["REASONING", "Kind", "StreamIdentity", "error_chunk", "has_reasoning", "heartbeat_chunk"]

# The names servers put a delta's or a message's reasoning under (vLLM now only the second).
REASONING = ("reasoning_content", "reasoning")


def has_reasoning(holder: dict[str, Any]) -> bool:
    """Whether a delta or a message carries reasoning text, under either name."""
    return any(isinstance(text := holder.get(name), str) and text for name in REASONING)


class Kind(enum.Enum):
    """Which OpenAI endpoint a stream belongs to, named by its chunk ``object``."""

    CHAT = "chat.completion.chunk"
    COMPLETION = "text_completion"

    @property
    def id_prefix(self) -> str:
        return "chatcmpl-" if self is Kind.CHAT else "cmpl-"

    def choice(self, finish_reason: str | None) -> dict[str, Any]:
        if self is Kind.CHAT:
            return {"index": 0, "delta": {"content": ""}, "finish_reason": finish_reason}
        return {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}


@dataclass(slots=True)
class StreamIdentity:
    """What every chunk of one stream shares: one id, the model, the time."""

    kind: Kind
    model: str
    created: int
    id: str = ""

    def claim(self, upstream_id: object) -> str:
        """The stream's id, fixed by the first chunk that needs one.

        The upstream's own id wins when it comes first and is not empty (TGI
        sends ``""``); a heartbeat sent before any chunk fixes a fresh one.
        """
        if not self.id:
            if isinstance(upstream_id, str) and upstream_id:
                self.id = upstream_id
            else:
                self.id = self.kind.id_prefix + uuid.uuid4().hex
        return self.id

    def chunk(self, finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.claim(None),
            "object": self.kind.value,
            "created": self.created,
            "model": self.model,
            "choices": [self.kind.choice(finish_reason)],
        }


def heartbeat_chunk(identity: StreamIdentity) -> bytes:
    """An empty-text chunk: One-API forwards it, clients append nothing."""
    return orjson.dumps(identity.chunk())


def error_chunk(identity: StreamIdentity, error: AdapterError) -> bytes:
    """An error after the 200: the openai SDK raises ``APIError`` on ``error``;
    the non-empty choice makes One-API forward it instead of dropping it."""
    body = identity.chunk(finish_reason="error")
    body.update(error.to_openai())
    return orjson.dumps(body)
