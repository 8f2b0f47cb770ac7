"""Usage counted with the upstream's own tokenizer, for streams that carry none.

Some servers send no usage even when asked (llama-cpp-python, TGI 2.x).
Then the prompt and the answer (content, reasoning and tool-call arguments)
are counted through the upstream's tokenize endpoints, where it has them:

- vLLM: ``POST /tokenize`` takes ``messages`` (the chat template applied)
  or ``prompt``, and answers ``{"count": N}``;
- llama.cpp server: ``POST /apply-template`` turns ``messages`` into the
  prompt text, ``POST /tokenize`` with ``content`` answers ``{"tokens": [...]}``;
- TGI: ``POST /chat_tokenize`` takes the chat request, ``POST /tokenize``
  takes ``inputs``; both answer with the tokens.

Which of them the upstream has is found on the first stream that needs it,
and kept for the process's life. Only an answer settles it: endpoints that
are not there (404, 405) or answer in no shape known here mean no tokenizer.
A server that cannot say yet (down, loading, overloaded: no connection, a
timeout, a 5xx, 408 or 429) is asked again on a later stream, at most every
``_RETRY_AFTER`` seconds. Where no tokenizer answers, or a call fails, there
is no usage: a number is never made up.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import Mapping
from typing import Any

from sse_adapter.errors import AdapterError
from sse_adapter.proxy.upstream import Upstream
from sse_adapter.repair.chunks import Kind
from sse_adapter.repair.dialects import json_or_none

__all__ = ["TokenCounter", "Tokenizer"]

log = logging.getLogger(__name__)

_WITHIN = 10.0  # seconds for each tokenize call: the stream's last frames wait for it
_LIMIT = 16 * 1024 * 1024  # a token list of a long prompt is large; enough for any
_RETRY_AFTER = 30.0  # seconds before a search that failed (the server down, or loading) is tried again
_NOT_YET = frozenset({408, 425, 429})  # with every 5xx: "ask again later", not "no such endpoint"


class Tokenizer(enum.Enum):
    VLLM = "vLLM /tokenize"
    LLAMA_CPP = "llama.cpp /apply-template + /tokenize"
    TGI = "TGI /chat_tokenize + /tokenize"


class _NotYet(Exception):
    """The upstream could not say yet whether it has a tokenizer."""


class TokenCounter:
    """Counts a finished stream's tokens through the upstream's tokenizer."""

    def __init__(self, upstream: Upstream, within: float = _WITHIN) -> None:
        self._upstream = upstream
        self._within = within
        self._found: asyncio.Future[Tokenizer | None] | None = None
        self._failed_at = -math.inf

    async def usage(self, kind: Kind, request: Mapping[str, Any], answer: str) -> dict[str, int] | None:
        """The usage of an answer to a request, or None when it cannot be counted exactly."""
        model = request.get("model")
        model = model if isinstance(model, str) else ""
        tokenizer = await self.tokenizer(model)
        if tokenizer is None:
            return None
        try:
            prompt = await self._prompt(tokenizer, kind, request)
            completion = await self._text(tokenizer, model, answer, special=False) if answer else 0
        except (TimeoutError, AdapterError) as error:
            log.info("the upstream's tokenizer did not count this stream: %s", error)
            return None
        if prompt is None or completion is None:
            return None
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def tokenizer(self, model: str) -> Tokenizer | None:
        """The upstream's tokenize endpoints, found once; callers at the same time share the search.
        A search that fails is tried again, but not before ``_RETRY_AFTER`` seconds."""
        now = asyncio.get_running_loop().time()
        if self._found is None or (self._found.done() and self._found.exception() is not None):
            if now - self._failed_at < _RETRY_AFTER:
                return None
            self._found = asyncio.ensure_future(self._find(model))
        try:
            return await asyncio.shield(self._found)
        except (TimeoutError, AdapterError, _NotYet):
            self._failed_at = now
            return None  # not known yet (the server may be loading)

    async def _find(self, model: str) -> Tokenizer | None:
        try:
            return await self._search(model)
        except (TimeoutError, AdapterError, _NotYet) as error:
            log.info(
                "the upstream could not say yet whether it has a tokenizer (%s); streams without usage "
                "go on without it, and a stream at least %g s later asks again",
                str(error) or f"no answer within {self._within:g} s",
                _RETRY_AFTER,
            )
            raise

    async def _search(self, model: str) -> Tokenizer | None:
        status, body = await self._post("/tokenize", {"model": model, "prompt": "a"})
        _settled(status)
        found = json_or_none(body) if status == 200 else None
        if isinstance(found, dict) and isinstance(found.get("count"), int):
            return self._say(Tokenizer.VLLM)
        if isinstance(found, dict) and isinstance(found.get("tokens"), list):
            return self._say(Tokenizer.LLAMA_CPP)  # it reads "content" and ignored "prompt"
        status, body = await self._post("/tokenize", {"inputs": "a", "add_special_tokens": False})
        _settled(status)
        if status == 200 and isinstance(json_or_none(body), list):
            return self._say(Tokenizer.TGI)
        return self._say(None)

    @staticmethod
    def _say(tokenizer: Tokenizer | None) -> Tokenizer | None:
        if tokenizer is None:
            log.warning(
                "the upstream has no tokenize endpoint sse-adapter knows; streams it sends without "
                "usage go on without it (counted in sse_adapter_streams_without_usage_total)"
            )
        else:
            log.info("streams without usage are counted with the upstream's tokenizer: %s", tokenizer.value)
        return tokenizer

    async def _prompt(self, tokenizer: Tokenizer, kind: Kind, request: Mapping[str, Any]) -> int | None:
        model = request.get("model")
        if kind is Kind.COMPLETION:
            prompt = request.get("prompt")
            return (
                await self._text(tokenizer, model, prompt, special=True) if isinstance(prompt, str) else None
            )
        messages = request.get("messages")
        if not isinstance(messages, list):
            return None
        # What the chat template reads: the tools offered and its switches (enable_thinking)
        chat: dict[str, Any] = {"messages": messages}
        for name in ("tools", "chat_template_kwargs"):
            if request.get(name):
                chat[name] = request[name]
        if tokenizer is Tokenizer.VLLM:
            return _count(tokenizer, *await self._post("/tokenize", {"model": model, **chat}))
        if tokenizer is Tokenizer.TGI:
            return _count(tokenizer, *await self._post("/chat_tokenize", {"model": model, **chat}))
        status, body = await self._post("/apply-template", chat)
        templated = json_or_none(body) if status == 200 else None
        text = templated.get("prompt") if isinstance(templated, dict) else None
        return await self._text(tokenizer, model, text, special=True) if isinstance(text, str) else None

    async def _text(self, tokenizer: Tokenizer, model: object, text: str, *, special: bool) -> int | None:
        """The tokens of a text; ``special``: with the tokens the server adds to a prompt (BOS)."""
        if tokenizer is Tokenizer.VLLM:
            body: dict[str, Any] = {"model": model, "prompt": text, "add_special_tokens": special}
        elif tokenizer is Tokenizer.LLAMA_CPP:
            body = {"content": text, "add_special": special, "parse_special": special}
        else:
            body = {"inputs": text, "add_special_tokens": special}
        return _count(tokenizer, *await self._post("/tokenize", body))

    async def _post(self, path: str, body: object) -> tuple[int, bytes]:
        return await self._upstream.post_json(path, body, self._within, _LIMIT)


def _settled(status: int) -> None:
    """Raise unless the status answers the search: a server that is down,
    loading or overloaded has not said that it has no tokenizer."""
    if status >= 500 or status in _NOT_YET:
        raise _NotYet(f"/tokenize answered {status}")


def _count(tokenizer: Tokenizer, status: int, body: bytes) -> int | None:
    """The number of tokens in a tokenize answer, or None for an answer of another shape."""
    if status != 200:
        return None
    found = json_or_none(body)
    if tokenizer is Tokenizer.VLLM:
        count = found.get("count") if isinstance(found, dict) else None
        return count if isinstance(count, int) and count >= 0 else None
    if tokenizer is Tokenizer.TGI and isinstance(found, dict):
        found = found.get("tokenize_response")  # /chat_tokenize
    if tokenizer is Tokenizer.LLAMA_CPP and isinstance(found, dict):
        found = found.get("tokens")
    return len(found) if isinstance(found, list) else None
