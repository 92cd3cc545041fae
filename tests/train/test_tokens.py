"""Caption token counts (kohaku.train.tokens): per-tag sums equal the tokenizer's own count of
the joined caption, including tags that end in punctuation; the report's figures."""

from __future__ import annotations

import polars as pl
import pytest

from kohaku.sdxl.tiny import tiny_tokenizers
from kohaku.train.tokens import TagLengths, caption_tokens, token_stats

TRICKY = ["1girl", "^_^", "hatsune miku \\(vocaloid\\)", ":)", "smile", "a", "x-ray", "!?"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizers()[0]


def parts_frame(rows: list[tuple[list[str], list[str], list[str]]]) -> pl.DataFrame:
    lists = pl.List(pl.String)
    return pl.DataFrame(rows, schema={"head": lists, "body": lists, "tail": lists}, orient="row")


def counts(tokenizer, texts: list[str]) -> list[int]:
    """The tokenizer's own counts, through its public call."""
    return [len(i) for i in tokenizer(texts, add_special_tokens=False).input_ids]


def test_a_captions_count_is_the_sum_of_its_tags(tokenizer) -> None:
    lengths = TagLengths(tokenizer, ", ")
    for k in range(len(TRICKY) + 1):
        for tags in (TRICKY[:k], TRICKY[k:][::-1]):
            joined = ", ".join(tags)
            assert lengths.caption(tags) == counts(tokenizer, [joined])[0], joined


def test_counts_ignore_the_tokenizers_truncation_settings(tokenizer) -> None:
    """A caller (diffusers' pipeline) may leave the shared Rust tokenizer truncating at 77."""
    tokenizer(["a " * 100], truncation=True, max_length=77)
    assert TagLengths(tokenizer).count_texts(["a " * 100]) == [100]


def test_caption_tokens_match_the_tokenizer_and_report(tokenizer) -> None:
    rows = [(["1girl"], TRICKY, ["safe"]), ([], [], []), (["^_^"], [], []),
            ([], ["a"] * 50, ["masterpiece"]), (["solo"], ["a"] * 160, ["!?"])]  # fmt: skip
    frame = parts_frame(rows)
    lengths = TagLengths(tokenizer, ", ")
    got = caption_tokens(frame, lengths).tolist()
    want = counts(tokenizer, [", ".join([*h, *b, *t]) for h, b, t in rows])
    assert got == want
    stats = token_stats(frame, lengths, 150)
    assert (stats.captions, stats.tokens_max, stats.over_75, stats.over_max) == (
        5, max(want), 2, 1)  # fmt: skip
    assert stats.as_counts()["captions_over_max_tokens"] == 1
    assert token_stats(frame.head(0), lengths, 225).captions == 0


def test_a_separator_without_a_space_counts_whole_captions(tokenizer) -> None:
    """With "," alone "^_^,:)" is one punctuation run: sums would be estimates there."""
    rows = [(["^_^"], [":)", "!?"], ["x-ray"])]
    lengths = TagLengths(tokenizer, ",")
    assert not lengths.additive
    assert caption_tokens(parts_frame(rows), lengths).tolist() == counts(
        tokenizer, ["^_^,:),!?,x-ray"]
    )
