"""The objects every relayed event reads keep their attributes in slots.

CPython 3.11 shares an instance dict's keys only up to 30 attributes; past
that the dict is a plain one and every attribute read on the per-event path
costs more (measured: about 1,100 instructions an event for chat, README
Performance). Slots keep the reads fast however many attributes there are.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from sse_adapter.proxy.relay import EventStream
from sse_adapter.repair.chunks import Kind, StreamIdentity
from sse_adapter.repair.stream import StreamRepairer
from sse_adapter.settings import Settings


def test_the_chat_repairer_has_no_instance_dict() -> None:
    repairer = StreamRepairer(StreamIdentity(Kind.CHAT, "m", 1), Settings(upstream="http://x"))
    assert not hasattr(repairer, "__dict__")


def test_the_event_streams_own_state_is_in_slots() -> None:
    settings = Settings(upstream="http://x")
    pipeline = SimpleNamespace(repairer=SimpleNamespace())
    stream = EventStream(
        cast(Any, SimpleNamespace()),
        cast(Any, pipeline),
        settings,
        cast(Any, SimpleNamespace(started=0.0)),
        heartbeat=None,
        heartbeat_mode="comment",
    )
    # What starlette's Response asks of every response; the relay's own state is slotted.
    assert set(vars(stream)) <= {"status_code", "background"}
    assert stream._pipeline is pipeline  # the slot holds what was given
