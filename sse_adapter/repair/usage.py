"""Whether a server's usage is its count, and where else its count is (pure).

One-API bills from the last usage a stream carries and new-api (with
``TrustUpstreamUsage``) from the last chunk's (shared/oneapi-relay.md), so a
usage that is not the server's count bills the wrong number. Servers send
placeholders: null or zeros on every chunk (TGI, LocalAI, Ollama), and
counts no generation has (no prompt tokens, no completion tokens for an
answer with text, a total that is not the sum). A placeholder is no usage:
the adapter counts one (proxy/relay.py) or, failing that, sends none, and
One-API counts itself -- never a number the server did not mean.

Where a server sends no usage object, its own count may be elsewhere:
llama-server's ``timings`` (``prompt_n`` tokens evaluated, ``cache_n``
taken from its cache, ``predicted_n`` generated).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

__all__ = [
    "CHAT_NAMES",
    "RESPONSES_NAMES",
    "Verdict",
    "count_of",
    "generated_text",
    "timings_count",
    "timings_usage",
    "usage_verdict",
    "with_total",
]

# The names of the prompt, completion and total counts in each format's usage.
CHAT_NAMES = ("prompt_tokens", "completion_tokens", "total_tokens")
RESPONSES_NAMES = ("input_tokens", "output_tokens", "total_tokens")
# Where a chat delta (or a completion's choice) carries what the model generated.
_GENERATED = ("content", "text", "reasoning_content", "reasoning", "tool_calls")
_TIMINGS = ("prompt_n", "cache_n", "predicted_n")


class Verdict(enum.Enum):
    REAL = "real"  # the server's count
    EMPTY = "empty"  # null, absent or all zeros: what servers repeat on every chunk
    PLACEHOLDER = "placeholder"  # counts that no generation has


def usage_verdict(
    usage: object,
    generated: Callable[[], bool | None] | None = None,
    names: tuple[str, str, str] = CHAT_NAMES,
) -> Verdict:
    """Whether ``usage`` is a count to bill on.

    ``generated`` says, when asked, whether the answer had any text (None:
    not known). It is asked only about a usage of zero completion tokens,
    which is the server's count for an answer with none (a stream cut before
    its first token, ``max_tokens`` reached inside the prompt) and a
    placeholder for one with text; when not known, the server is believed.
    Every prompt has tokens (a chat template renders at least its turn
    markers), so zero prompt tokens is never a count. A missing total is
    no fault: :func:`with_total` fills it in.
    """
    if not isinstance(usage, dict):
        return Verdict.EMPTY
    prompt, completion, total = (count_of(usage.get(name)) for name in names)
    if not (prompt or completion or total):
        return Verdict.EMPTY
    if not prompt or completion is None or completion < 0:
        return Verdict.PLACEHOLDER
    if completion == 0 and generated is not None and generated() is True:
        return Verdict.PLACEHOLDER
    if total is not None and total != prompt + completion:
        return Verdict.PLACEHOLDER
    return Verdict.REAL


def with_total(usage: dict[str, Any], names: tuple[str, str, str] = CHAT_NAMES) -> bool:
    """Fill in a real usage's missing total (One-API reads ``total_tokens``:
    without it, it counts itself); whether it was missing."""
    prompt, completion, total = names
    if usage.get(total) is not None:
        return False
    usage[total] = usage[prompt] + usage[completion]
    return True


def timings_usage(timings: object) -> dict[str, Any] | None:
    """llama-server's own count, from the ``timings`` it sends with or instead
    of usage: the prompt is the tokens it evaluated plus those it took from
    its cache (its usage says ``prompt_tokens`` = ``prompt_n`` + ``cache_n``)."""
    if not isinstance(timings, dict):
        return None
    evaluated, cached, predicted = (count_of(timings.get(name)) for name in _TIMINGS)
    prompt = (evaluated or 0) + (cached or 0)
    if evaluated is None or predicted is None or prompt <= 0:
        return None
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": predicted,
        "total_tokens": prompt + predicted,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def timings_count(timings: object, generated: Callable[[], bool | None]) -> dict[str, Any] | None:
    """llama-server's ``timings`` as a usage, when that is a count to bill on (:func:`usage_verdict`)."""
    usage = timings_usage(timings)
    return usage if usage is not None and usage_verdict(usage, generated) is Verdict.REAL else None


def generated_text(chunk: dict[str, Any]) -> bool:
    """Whether a chunk's choices (a delta, a message, or a completion's choice)
    carry anything generated: text, reasoning or tool calls."""
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        holder = choice.get("delta", choice.get("message", choice))
        if isinstance(holder, dict) and any(holder.get(name) for name in _GENERATED):
            return True
    return False


def count_of(value: object) -> int | None:
    """A count as JSON gives it: an int, never a bool (True is an int to Python)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
