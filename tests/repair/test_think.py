"""<think> splitting, with the tags cut at every offset (pure)."""

from __future__ import annotations

import pytest

from sse_adapter.repair.think import ThinkSplitter

CASES = [
    ("<think>plan</think>answer", "plan", "answer"),
    ("before<think>plan</think>after", "plan", "beforeafter"),
    ("no tags at all", "", "no tags at all"),
    ("a < b and <thin ice", "", "a < b and <thin ice"),
    ("<think>unclosed", "unclosed", ""),
    ("<think>a</think>b<think>c</think>d", "ac", "bd"),
    ("x</think>y", "", "x</think>y"),
]


def split(*pieces: str) -> tuple[str, str]:
    splitter = ThinkSplitter()
    reasoning, content = [], []
    for piece in pieces:
        thought, said = splitter.feed(piece)
        reasoning.append(thought)
        content.append(said)
    thought, said = splitter.flush()
    return "".join(reasoning) + thought, "".join(content) + said


@pytest.mark.parametrize(("text", "reasoning", "content"), CASES)
def test_every_split_gives_the_same_result(text: str, reasoning: str, content: str) -> None:
    for cut in range(len(text) + 1):
        assert split(text[:cut], text[cut:]) == (reasoning, content), cut
    assert split(*text) == (reasoning, content)


def test_nothing_is_held_longer_than_a_tag_could_need() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>abc</th") == ("abc", "")
    assert splitter.feed("ink>done") == ("", "done")
