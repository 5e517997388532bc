"""Inline <think> reasoning is split from content, whatever the chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmlink._think import ThinkSplitter


def split_all(pieces: list[str]) -> tuple[str, str, str, str]:
    s = ThinkSplitter()
    content, reasoning = [], []
    for p in pieces:
        c, r = s.feed(p)
        content.append(c)
        reasoning.append(r)
    c, r = s.flush()
    content.append(c)
    reasoning.append(r)
    total_c, total_r = s.finish()
    return "".join(content), "".join(reasoning), total_c, total_r


CASES = [
    ("<think>plan</think>\n\nAnswer", "Answer", "plan"),
    ("  <think>plan</think>Answer", "Answer", "plan"),
    ("plain answer", "plain answer", ""),
    ("plan only</think>Answer", "Answer", "plan only"),
    ("<think>unfinished reasoning", "", "unfinished reasoning"),
    ("a < b and </thinking> is not a tag", "a < b and </thinking> is not a tag", ""),
    ("Answer with <think> in the middle", "Answer with <think> in the middle", ""),
    ("", "", ""),
    ("<thi", "<thi", ""),
]


@pytest.mark.parametrize(("text", "content", "reasoning"), CASES, ids=[c[0][:20] for c in CASES])
def test_every_split_gives_the_same_aggregate(text: str, content: str, reasoning: str) -> None:
    """Cutting the text at any point, or into single characters, never changes the result."""
    for i in range(len(text) + 1):
        _, _, c, r = split_all([text[:i], text[i:]])
        assert (c, r) == (content, reasoning), i
    _, _, c, r = split_all(list(text))
    assert (c, r) == (content, reasoning)


def test_increments_never_put_tagged_reasoning_in_content() -> None:
    """With an opening tag, streamed content increments hold no reasoning at all."""
    stream_c, stream_r, _, _ = split_all(list("<think>secret</think>visible"))
    assert stream_c == "visible"
    assert stream_r == "secret"


def test_missing_opening_tag_fixes_the_aggregate() -> None:
    """Text before a bare </think> was reasoning: the aggregate moves it out of content."""
    stream_c, _, total_c, total_r = split_all(["step one, ", "step two</th", "ink>done"])
    assert total_c == "done"
    assert total_r == "step one, step two"
    assert stream_c.endswith("done")


def test_only_the_first_close_tag_counts() -> None:
    """A second </think> after the answer started is plain content."""
    _, _, c, r = split_all(["<think>a</think>b </think> c"])
    assert (c, r) == ("b </think> c", "a")


@given(st.text(alphabet="ab <>/thinkT\n", max_size=40), st.data())
def test_random_chunking_is_stable(body: str, data: st.DataObject) -> None:
    """Random texts cut at random points give the same aggregate as the whole text."""
    whole = split_all([body])[2:]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    pieces = [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert split_all(pieces)[2:] == whole
