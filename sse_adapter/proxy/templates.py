"""Whether a model's chat template opens ``<think>`` in the prompt, asked of the server.

Thinking models' templates (Qwen3's, DeepSeek-R1's, llama-server with
``templates/think_tools.jinja``) end the prompt in ``<think>``: the answer
then starts inside the thought and carries only ``</think>``. A request that
says so (``chat_template_kwargs.enable_thinking``) settles it; for one that
does not, ``--think-tags split`` would have to guess from the answer's first
characters. The server can say instead, by rendering a one-line chat:

- llama.cpp server: ``POST /apply-template`` answers ``{"prompt": ...}``;
- vLLM: ``POST /tokenize`` with ``messages`` and ``return_token_strs``
  answers the rendered prompt's tokens as strings.

The answer is kept per model for the process's life (a template does not
change under a running server); a server that cannot say (no such endpoint,
an answer of another shape) is not asked again; one that fails (down,
loading, a timeout) is asked again on a later stream, at most every
``_RETRY_AFTER`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from sse_adapter.errors import AdapterError
from sse_adapter.proxy.tokens import NotYet, settled
from sse_adapter.proxy.upstream import Upstream
from sse_adapter.repair.dialects import json_or_none

__all__ = ["ThinkOpening", "opens_think"]

log = logging.getLogger(__name__)

_WITHIN = 1.0  # seconds a stream's start may wait for the answer: rendering a template takes milliseconds
_LIMIT = 64 * 1024
_RETRY_AFTER = 30.0
_MOST_MODELS = 256  # names a client can make up: past this many, a model is not asked about
_CHAT = [{"role": "user", "content": "hi"}]
# What a byte-level BPE (GPT-2's Ġ Ċ) or SentencePiece (▁) token string has for a space or a newline.
_BLANK = " \t\r\n\u0120\u010a\u2581"


def opens_think(prompt: str) -> bool:
    """Whether a rendered prompt leaves the thought open: it ends in ``<think>``."""
    return prompt.replace("<0x0A>", "\n").rstrip(_BLANK).endswith("<think>")


class ThinkOpening:
    """The servers' own word on each model's template, asked once."""

    def __init__(self, upstream: Upstream, within: float = _WITHIN) -> None:
        self._upstream = upstream
        self._within = within
        self._known: dict[str, bool | None] = {}
        self._asking: dict[str, asyncio.Future[bool | None]] = {}
        self._failed_at: dict[str, float] = {}

    async def opens(self, model: str) -> bool | None:
        """Whether the model's template opens the thought; None when the server cannot say (yet)."""
        if model in self._known:
            return self._known[model]
        now = asyncio.get_running_loop().time()
        asking = self._asking.get(model)
        if asking is None:
            if now - self._failed_at.get(model, -math.inf) < _RETRY_AFTER:
                return None
            if len(self._known) + len(self._failed_at) >= _MOST_MODELS:
                return None
            asking = self._asking[model] = asyncio.ensure_future(self._ask(model))
        try:
            found = await asyncio.shield(asking)
        except (TimeoutError, AdapterError, NotYet) as error:
            self._failed_at[model] = now
            log.info(
                "the upstream did not say whether %r's template opens <think>: %s", model, error or "late"
            )
            return None
        finally:
            if asking.done():
                self._asking.pop(model, None)
        self._failed_at.pop(model, None)
        self._known[model] = found
        return found

    async def _ask(self, model: str) -> bool | None:
        status, body = await self._post("/apply-template", {"messages": _CHAT})
        found = json_or_none(body) if status == 200 else None
        if isinstance(found, dict) and isinstance(prompt := found.get("prompt"), str):
            return self._say(model, opens_think(prompt))
        tokenize = {
            "model": model,
            "messages": _CHAT,
            "add_generation_prompt": True,
            "return_token_strs": True,
        }
        status, body = await self._post("/tokenize", tokenize)
        found = json_or_none(body) if status == 200 else None
        strings = found.get("token_strs") if isinstance(found, dict) else None
        if isinstance(strings, list) and all(isinstance(string, str) for string in strings):
            return self._say(model, opens_think("".join(strings)))
        return None

    async def _post(self, path: str, body: Any) -> tuple[int, bytes]:
        status, answer = await self._upstream.post_json(path, body, self._within, _LIMIT)
        settled(path, status)  # down, loading or overloaded: asked again later, as the tokenizer is
        return status, answer

    @staticmethod
    def _say(model: str, opened: bool) -> bool:
        log.info(
            "the chat template of %r %s <think> in the prompt", model, "opens" if opened else "does not open"
        )
        return opened
