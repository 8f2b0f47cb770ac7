"""Usage counted with the upstream's own tokenizer, for streams that carry none.

Some servers send no usage even when asked (llama-cpp-python, TGI 2.x), and a
proxy in front of one may strip it. Then the count is the one the server
would have sent (README, "Billing"):

- the prompt as the server renders it: its chat template applied to the
  request's ``messages`` and ``tools``, with the request's own
  ``add_generation_prompt``, ``continue_final_message`` and
  ``chat_template_kwargs``;
- the completion as what was generated, not what is visible: each choice's
  assistant turn (content, reasoning, tool calls; :mod:`~sse_adapter.repair.turns`)
  rendered back by the same template after the prompt's messages, minus the
  tokens it shares with the rendered prompt and minus the template's end of
  turn; plus a matched stop string (in the turn's text) and the stop token
  the model generated. ``n`` choices: the prompt once, the completions summed.

The servers' endpoints for it:

- vLLM: ``POST /tokenize`` takes ``messages`` with those switches (or
  ``prompt``) and answers the tokens;
- llama.cpp server: ``POST /apply-template`` renders ``messages`` to text,
  ``POST /tokenize`` with ``content`` answers the tokens. It renders a
  last assistant message as a prefill (no end of turn): a turn rendered back
  is followed by a user turn of one character, measured as part of the end;
- TGI: ``POST /chat_tokenize`` renders the chat request (with the generation
  prompt, always), ``POST /tokenize`` takes ``inputs``: the completion is the
  visible text's tokens plus the stop token, an approximation.
- llama-cpp-python: ``POST /extras/tokenize`` (a BOS on every text) and no
  template: the prompt is the messages' text, the completion as TGI's; both
  lower bounds.

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
import hashlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import orjson

from sse_adapter.errors import AdapterError
from sse_adapter.proxy.upstream import Upstream
from sse_adapter.repair.chunks import Kind
from sse_adapter.repair.dialects import json_or_none
from sse_adapter.repair.turns import Turn, Turns

__all__ = ["NotYet", "TokenCounter", "Tokenizer", "settled"]

log = logging.getLogger(__name__)

_WITHIN = 10.0  # seconds for each tokenize call: the stream's last frames wait for it
_LIMIT = 16 * 1024 * 1024  # a token list of a long prompt is large; enough for any
_RETRY_AFTER = 30.0  # seconds before a search that failed (the server down, or loading) is tried again
_NOT_YET = frozenset({408, 425, 429})  # with every 5xx: "ask again later", not "no such endpoint"
# What the chat template reads besides the messages.
_TEMPLATE_FIELDS = ("tools", "chat_template_kwargs")
_SWITCHES = ("add_generation_prompt", "continue_final_message")
# After a turn rendered back by llama.cpp: a turn of the user's, so the assistant's is not a prefill.
_AFTER_TURN: dict[str, Any] = {"role": "user", "content": "."}
_ENDS_KEPT = 256
_PROBE = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


class Tokenizer(enum.Enum):
    VLLM = "vLLM /tokenize"
    LLAMA_CPP = "llama.cpp /apply-template + /tokenize"
    TGI = "TGI /chat_tokenize + /tokenize"
    LLAMA_CPP_PYTHON = "llama-cpp-python /extras/tokenize (no chat template: approximate)"


# Servers whose template cannot render an answer's turn back: its visible text is counted.
_NO_TURNS = frozenset({Tokenizer.TGI, Tokenizer.LLAMA_CPP_PYTHON})


class NotYet(Exception):
    """The upstream could not say yet whether it has a tokenizer."""


class TokenCounter:
    """Counts a finished stream's tokens through the upstream's tokenizer."""

    def __init__(self, upstream: Upstream, within: float = _WITHIN) -> None:
        self._upstream = upstream
        self._within = within
        self._found: asyncio.Future[Tokenizer | None] | None = None
        self._failed_at = -math.inf
        self._ends: dict[bytes, int] = {}  # the tokens of the template's end of a turn, by model and tools

    async def usage(self, kind: Kind, request: Mapping[str, Any], turns: Turns) -> dict[str, int] | None:
        """The usage of a stream's answer to a request, or None when it cannot be counted."""
        model = request.get("model")
        model = model if isinstance(model, str) else ""
        if turns.overflowed:
            return None
        tokenizer = await self.tokenizer(model)
        if tokenizer is None:
            return None
        answer = list(turns.by_choice.values())
        try:
            if kind is Kind.COMPLETION:
                counted = await self._completion(tokenizer, model, request, answer)
            else:
                counted = await _Chat(self, tokenizer, model, request).count(answer)
        except (TimeoutError, AdapterError) as error:
            log.info("the upstream's tokenizer did not count this stream: %s", error)
            return None
        if counted is None:
            return None
        prompt, completion = counted
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
        except (TimeoutError, AdapterError, NotYet):
            self._failed_at = now
            return None  # not known yet (the server may be loading)

    async def _find(self, model: str) -> Tokenizer | None:
        try:
            return await self._search(model)
        except (TimeoutError, AdapterError, NotYet) as error:
            log.info(
                "the upstream could not say yet whether it has a tokenizer (%s); streams without usage "
                "go on without it, and a stream at least %g s later asks again",
                str(error) or f"no answer within {self._within:g} s",
                _RETRY_AFTER,
            )
            raise

    async def _search(self, model: str) -> Tokenizer | None:
        status, body = await self._post("/tokenize", {"model": model, "prompt": "a"})
        settled("/tokenize", status)
        found = json_or_none(body) if status == 200 else None
        if isinstance(found, dict) and isinstance(found.get("count"), int):
            return self._say(Tokenizer.VLLM)
        if isinstance(found, dict) and isinstance(found.get("tokens"), list):
            return self._say(Tokenizer.LLAMA_CPP)  # it reads "content" and ignored "prompt"
        status, body = await self._post("/tokenize", {"inputs": "a", "add_special_tokens": False})
        settled("/tokenize", status)
        if status == 200 and isinstance(json_or_none(body), list):
            return self._say(Tokenizer.TGI)
        status, body = await self._post("/extras/tokenize", {"model": model, "input": "a"})
        settled("/extras/tokenize", status)
        found = json_or_none(body) if status == 200 else None
        if isinstance(found, dict) and isinstance(found.get("tokens"), list):
            return self._say(Tokenizer.LLAMA_CPP_PYTHON)
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

    async def _completion(
        self, tokenizer: Tokenizer, model: str, request: Mapping[str, Any], answer: list[Turn]
    ) -> tuple[int, int] | None:
        """A text completion: the prompt with the tokens the server adds (BOS), and each
        choice's text as :meth:`visible` counts it."""
        prompt = request.get("prompt")
        if not isinstance(prompt, str):
            return None
        prompt_tokens = await self._text(tokenizer, model, prompt, special=True)
        completion = await self.visible(tokenizer, model, answer) if prompt_tokens is not None else None
        return None if prompt_tokens is None or completion is None else (prompt_tokens, completion)

    async def visible(self, tokenizer: Tokenizer, model: str, answer: list[Turn]) -> int | None:
        """The tokens of the text each choice showed (a stop string matched included), its
        reasoning and tool-call arguments, and the stop token where the model generated one."""
        total = 0
        for turn in answer:
            text = turn.message()["content"] + "".join(turn.reasoning)
            text += "".join(part for call in turn.calls.values() for part in call.arguments)
            counted = await self.text(tokenizer, model, text) if text else 0
            if counted is None:
                return None
            total += counted + turn.ended_on_stop_token
        return total

    async def render(self, tokenizer: Tokenizer, model: str, chat: Mapping[str, Any]) -> list[object] | None:
        """The tokens of a chat as the server's template renders it (``chat``: messages,
        the template's fields and switches), or None when the server answers no tokens."""
        if tokenizer is Tokenizer.VLLM:
            return _tokens(tokenizer, *await self._post("/tokenize", {"model": model, **chat}))
        if tokenizer is Tokenizer.TGI:
            return _tokens(tokenizer, *await self._post("/chat_tokenize", {"model": model, **chat}))
        if tokenizer is Tokenizer.LLAMA_CPP_PYTHON:  # no template endpoint: the turns' text alone
            given = {"model": model, "input": _untemplated(chat)}
            return _tokens(tokenizer, *await self._post("/extras/tokenize", given))
        status, body = await self._post("/apply-template", chat)
        templated = json_or_none(body) if status == 200 else None
        text = templated.get("prompt") if isinstance(templated, dict) else None
        if not isinstance(text, str):
            return None
        body_of = {"content": text, "add_special": True, "parse_special": True}
        return _tokens(tokenizer, *await self._post("/tokenize", body_of))

    async def end_of_turn(self, tokenizer: Tokenizer, model: str, fields: Mapping[str, Any]) -> int | None:
        """How many tokens the template puts after a turn's content (``<|im_end|>\\n``, say;
        llama.cpp: and the user turn after it), measured once per model and tools: a turn of one
        token rendered back whole, less that token, past what it shares with a prompt."""
        # The tools offered may change what a turn ends with. A digest, not the tools
        # themselves: a client's tools may be megabytes, and _ENDS_KEPT of them are kept.
        key = hashlib.blake2b(orjson.dumps([model, fields]), digest_size=16).digest()
        if key in self._ends:
            return self._ends[key]
        prompt, whole, content = await asyncio.gather(
            self.render(tokenizer, model, {"messages": _PROBE[:1], **fields}),
            self.render(tokenizer, model, _rendered_back(tokenizer, _PROBE, fields)),
            self.text(tokenizer, model, _PROBE[1]["content"]),
        )
        if prompt is None or whole is None or content is None:
            return None
        end = _after(whole, prompt) - content
        if end < 0:
            return None
        if len(self._ends) >= _ENDS_KEPT:
            self._ends.clear()  # a client that sends new tools each time must not grow it forever
        self._ends[key] = end
        return end

    async def text(self, tokenizer: Tokenizer, model: str, text: str) -> int | None:
        return await self._text(tokenizer, model, text, special=False)

    async def _text(self, tokenizer: Tokenizer, model: object, text: str, *, special: bool) -> int | None:
        """The tokens of a text; ``special``: with the tokens the server adds to a prompt (BOS)."""
        if tokenizer is Tokenizer.VLLM:
            body: dict[str, Any] = {"model": model, "prompt": text, "add_special_tokens": special}
        elif tokenizer is Tokenizer.LLAMA_CPP:
            body = {"content": text, "add_special": special, "parse_special": special}
        elif tokenizer is Tokenizer.LLAMA_CPP_PYTHON:
            return await self._extras(model, text, special)
        else:
            body = {"inputs": text, "add_special_tokens": special}
        tokens = _tokens(tokenizer, *await self._post("/tokenize", body))
        return None if tokens is None else len(tokens)

    async def _extras(self, model: object, text: str, special: bool) -> int | None:
        """llama-cpp-python's count, which always adds the BOS: less an empty text's, unless ``special``."""
        found = await self._post("/extras/tokenize", {"model": model, "input": text})
        tokens = _tokens(Tokenizer.LLAMA_CPP_PYTHON, *found)
        if tokens is None or special:
            return None if tokens is None else len(tokens)
        bos = _tokens(
            Tokenizer.LLAMA_CPP_PYTHON, *await self._post("/extras/tokenize", {"model": model, "input": ""})
        )
        return None if bos is None else len(tokens) - len(bos)

    async def _post(self, path: str, body: object) -> tuple[int, bytes]:
        return await self._upstream.post_json(path, body, self._within, _LIMIT)


class _Chat:
    """One chat request's count: its prompt rendered once, each choice's turn after it."""

    def __init__(self, counter: TokenCounter, tokenizer: Tokenizer, model: str, request: Mapping[str, Any]):
        self._counter, self._tokenizer, self._model = counter, tokenizer, model
        messages = request.get("messages")
        self._messages: list[Any] | None = messages if isinstance(messages, list) else None
        self._fields = {name: request[name] for name in _TEMPLATE_FIELDS if request.get(name)}
        self._switches = {name: request[name] for name in _SWITCHES if isinstance(request.get(name), bool)}
        self._stop_shown = request.get("include_stop_str_in_output") is True  # vLLM: in the text already

    async def count(self, answer: list[Turn]) -> tuple[int, int] | None:
        """The prompt's tokens and the completions', every tokenize call at once."""
        if self._messages is None:
            return None
        chat = {"messages": self._messages, **self._fields}
        if self._tokenizer in _NO_TURNS:  # its template cannot render a turn back: approximately
            prompt, counted = await asyncio.gather(
                self._render(chat), self._counter.visible(self._tokenizer, self._model, answer)
            )
            return None if prompt is None or counted is None else (len(prompt), counted)
        chat.update(self._switches)  # TGI knows none: it renders the generation prompt always
        end, (prompt, *rendered) = await asyncio.gather(
            self._counter.end_of_turn(self._tokenizer, self._model, self._fields),
            asyncio.gather(*map(self._render, [chat, *self._turns(answer)])),
        )
        if prompt is None or end is None or None in rendered:
            return None
        completion = _generated(answer, rendered, prompt, end)
        return None if completion is None else (len(prompt), completion)

    def _turns(self, answer: list[Turn]) -> list[dict[str, Any]]:
        """The chats that render each turn back; a turn that reasons beside its answer three
        times: with its reasoning, without, and as the model wrote it (``raw``)."""
        messages, prefill = self._before_turn()
        ways = [("field", "none", "raw") if turn.reasons_aside else ("field",) for turn in answer]
        return [
            _rendered_back(
                self._tokenizer, [*messages, turn.message(prefill, way, self._stop_shown)], self._fields
            )
            for turn, each in zip(answer, ways, strict=True)
            for way in each
        ]

    async def _render(self, chat: Mapping[str, Any]) -> list[object] | None:
        return await self._counter.render(self._tokenizer, self._model, chat)

    def _before_turn(self) -> tuple[list[Any], str]:
        """The messages before the answer's turn, and the text the request began that turn
        with: a last assistant message is continued (vLLM: ``continue_final_message``;
        llama.cpp: always), so the answer renders back as its end."""
        messages = self._messages or []
        last = messages[-1] if messages else None
        continued = self._switches.get("continue_final_message", self._tokenizer is Tokenizer.LLAMA_CPP)
        if continued and isinstance(last, dict) and last.get("role") == "assistant":
            content = last.get("content")
            return messages[:-1], content if isinstance(content, str) else ""
        return messages, ""


def _generated(
    answer: list[Turn], rendered: list[list[object] | None], prompt: list[object], end: int
) -> int | None:
    """The tokens each turn generated, summed: its rendering past the prompt's tokens, less
    the end of a turn, plus the stop token it generated. A turn that reasons beside its
    answer was rendered three times (:meth:`_Chat._turns`); its own template's way wins,
    unless that renders no reasoning at all."""
    completion = 0
    for turn in answer:
        tokens = rendered.pop(0) or []
        if turn.reasons_aside:
            without, raw = rendered.pop(0) or [], rendered.pop(0) or []
            tokens = raw if len(tokens) <= len(without) else tokens
        generated = _after(tokens, prompt) - end
        if generated < 0:
            return None
        completion += generated + turn.ended_on_stop_token
    return completion


def _untemplated(chat: Mapping[str, Any]) -> str:
    """A chat's text for a server with no chat template to render it: each message's text and the
    tools' definitions, one a line. The template's markup is missing: a count of it is a lower bound."""
    lines = [message.get("content") for message in chat.get("messages") or () if isinstance(message, dict)]
    texts = [line for line in lines if isinstance(line, str)]
    return "\n".join([*texts, *(orjson.dumps(tool).decode() for tool in chat.get("tools") or ())])


def _rendered_back(tokenizer: Tokenizer, messages: list[Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The chat that renders a last assistant turn whole, with its end."""
    after = [_AFTER_TURN] if tokenizer is Tokenizer.LLAMA_CPP else []
    return {"messages": [*messages, *after], "add_generation_prompt": False, **fields}


def _after(rendered: list[object], prompt: list[object]) -> int:
    """How many tokens of a rendering come after those it shares with the prompt."""
    shared = 0
    for mine, theirs in zip(rendered, prompt, strict=False):
        if mine != theirs:
            break
        shared += 1
    return len(rendered) - shared


def settled(path: str, status: int) -> None:
    """Raise unless the status answers the search: a server that is down,
    loading or overloaded has not said that it has no tokenizer."""
    if status >= 500 or status in _NOT_YET:
        raise NotYet(f"{path} answered {status}")


def _tokens(tokenizer: Tokenizer, status: int, body: bytes) -> list[object] | None:
    """The tokens of a tokenize answer, or None for an answer of another shape."""
    if status != 200:
        return None
    found = json_or_none(body)
    if isinstance(found, dict) and tokenizer is not Tokenizer.TGI:
        found = found.get("tokens")  # vLLM, llama.cpp and llama-cpp-python
    elif isinstance(found, dict):
        found = found.get("tokenize_response")  # TGI's /chat_tokenize
    if not isinstance(found, list):
        return None
    return [token.get("id") if isinstance(token, dict) else token for token in found]
