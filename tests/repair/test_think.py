"""<think> splitting, with the tags cut at every offset (pure)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_adapter.repair.think import THOUGHT_HOLD, ThinkSplitter, prompt_opens_think

OPEN, CLOSE = "<think>", "</think>"

CASES = [
    pytest.param("<think>plan</think>answer", None, "plan", "answer", id="tags"),
    pytest.param("before<think>plan</think>after", None, "plan", "beforeafter", id="text-before-the-tag"),
    pytest.param("no tags at all", None, "", "no tags at all", id="no-tags"),
    pytest.param("a < b and <thin ice", None, "", "a < b and <thin ice", id="tag-like-text"),
    pytest.param("<think>unclosed", None, "unclosed", "", id="unclosed"),
    pytest.param("<think>a</think>b<think>c</think>d", None, "ac", "bd", id="two-thoughts"),
    # The prompt opened <think> (Qwen3, DeepSeek-R1 templates): only the closing tag comes.
    pytest.param("x</think>y", None, "x", "y", id="opened-in-the-prompt"),
    pytest.param("\n\n</think>\n\nHi", None, "\n\n", "\n\nHi", id="empty-thought-opened-in-the-prompt"),
    pytest.param("x</think>y<think>z</think>w", None, "xz", "yw", id="opened-then-a-second-thought"),
    pytest.param("a<think>b</think>c</think>d", None, "b", "ac</think>d", id="an-opening-tag-first-decides"),
    pytest.param("x" * THOUGHT_HOLD + "</think>y", None, "x" * THOUGHT_HOLD, "y", id="closed-at-the-hold"),
    pytest.param(
        "x" * (THOUGHT_HOLD + 1) + "</think>y",
        None,
        "",
        "x" * (THOUGHT_HOLD + 1) + "</think>y",
        id="closed-past-the-hold",
    ),
    # The request said thinking is on: the answer starts inside, without waiting for a tag.
    pytest.param("plan</think>answer", True, "plan", "answer", id="on-opened"),
    pytest.param("<think>plan</think>answer", True, "plan", "answer", id="on-model-writes-the-opening"),
    pytest.param("x" * 999 + "</think>y", True, "x" * 999, "y", id="on-a-long-thought"),
    pytest.param("never closed", True, "never closed", "", id="on-never-closed"),
    # The request said thinking is off: the template closed it; a model's own tags are still split.
    pytest.param("x</think>y", False, "", "x</think>y", id="off-a-stray-close-is-text"),
    pytest.param("<think>plan</think>answer", False, "plan", "answer", id="off-model-thinks-anyway"),
]


def split(*pieces: str, opened: bool | None = None, hold: int | None = THOUGHT_HOLD) -> tuple[str, str]:
    splitter = ThinkSplitter(opened, hold)
    reasoning, content = [], []
    for piece in pieces:
        thought, said = splitter.feed(piece)
        reasoning.append(thought)
        content.append(said)
    thought, said = splitter.flush()
    return "".join(reasoning) + thought, "".join(content) + said


@pytest.mark.parametrize(("text", "opened", "reasoning", "content"), CASES)
def test_every_split_gives_the_same_result(
    text: str, opened: bool | None, reasoning: str, content: str
) -> None:
    for cut in range(len(text) + 1):
        assert split(text[:cut], text[cut:], opened=opened) == (reasoning, content), cut
    assert split(*text, opened=opened) == (reasoning, content)


def reference(text: str, opened: bool | None, hold: int | None) -> tuple[str, str]:
    """The rule, on a whole text: what the splitter must give however the text arrives."""
    reasoning, rest = "", text
    close, opening = text.find(CLOSE), text.find(OPEN)
    if opened is True:
        end = close if close >= 0 else len(text)
        reasoning, rest = text[:end].replace(OPEN, ""), text[end + len(CLOSE) :]
    elif opened is None and 0 <= close <= (len(text) if hold is None else hold) and not 0 <= opening < close:
        reasoning, rest = text[:close], text[close + len(CLOSE) :]
    parts: dict[bool, list[str]] = {True: [reasoning], False: []}
    inside, start = False, 0
    while True:
        tag = CLOSE if inside else OPEN
        found = rest.find(tag, start)
        parts[inside].append(rest[start:] if found < 0 else rest[start:found])
        if found < 0:
            return "".join(parts[True]), "".join(parts[False])
        start, inside = found + len(tag), not inside


TEXTS = st.lists(st.sampled_from([OPEN, CLOSE, "<", "</", "<th", "think>", "a", "b", "\n"]), max_size=14).map(
    "".join
)


@settings(max_examples=400, deadline=None)
@given(
    TEXTS,
    st.sampled_from([None, True, False]),
    st.sampled_from([None, 0, 3, 10, THOUGHT_HOLD]),
    st.lists(st.integers(min_value=0, max_value=120), max_size=6),
)
def test_any_text_split_anywhere_follows_the_rule(
    text: str, opened: bool | None, hold: int | None, cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(cut % (len(text) + 1) for cut in cuts)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert split(*pieces, opened=opened, hold=hold) == reference(text, opened, hold)


def test_nothing_is_held_longer_than_a_tag_could_need() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>abc</th") == ("abc", "")
    assert splitter.feed("ink>done") == ("", "done")


def test_an_answer_with_no_thought_is_held_at_most_the_hold() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("x" * THOUGHT_HOLD) == ("", "")  # a </think> may still come
    released = splitter.feed("y" * len(CLOSE))
    assert released == ("", "x" * THOUGHT_HOLD + "y" * len(CLOSE))
    assert splitter.feed("more") == ("", "more")  # from then on, only a tag's first characters wait
    assert splitter.feed(" text </think> is text") == ("", " text </think> is text")


@pytest.mark.parametrize(
    ("opened", "piece", "expected"),
    [
        pytest.param(True, "Let me see", ("Let me see", ""), id="on-reasoning-at-once"),
        pytest.param(False, "Hello", ("", "Hello"), id="off-content-at-once"),
        pytest.param(None, "<think>Let me", ("Let me", ""), id="unsaid-an-opening-tag-decides-at-once"),
        pytest.param(None, "Hello", ("", ""), id="unsaid-held"),
    ],
)
def test_what_the_request_says_decides_without_holding(
    opened: bool | None, piece: str, expected: tuple[str, str]
) -> None:
    assert ThinkSplitter(opened).feed(piece) == expected


@pytest.mark.parametrize("opened", [None, True])
def test_reasoning_from_the_server_itself_means_the_content_is_the_answer(opened: bool | None) -> None:
    splitter = ThinkSplitter(opened)
    splitter.settle()
    assert splitter.feed("The answer") == ("", "The answer")
    held = ThinkSplitter()
    assert held.feed("The ") == ("", "")
    held.settle()
    assert held.feed("answer") == ("", "The answer")


@pytest.mark.parametrize(
    ("request_body", "opened"),
    [
        pytest.param({"chat_template_kwargs": {"enable_thinking": True}}, True, id="on"),
        pytest.param({"chat_template_kwargs": {"enable_thinking": False}}, False, id="off"),
        pytest.param({"chat_template_kwargs": {"thinking": True}}, True, id="deepseek-v3.1"),
        pytest.param({"chat_template_kwargs": {"enable_thinking": "yes"}}, None, id="not-a-bool"),
        pytest.param({"chat_template_kwargs": None}, None, id="null"),
        pytest.param({}, None, id="unsaid"),
    ],
)
def test_the_request_says_whether_the_prompt_opened_a_thought(
    request_body: dict[str, Any], opened: bool | None
) -> None:
    assert prompt_opens_think(request_body) is opened
