"""Caption token counts under a CLIP tokenizer, without torch: each tag's length, the cut of
a caption longer than `max_tokens` at a tag boundary, and the figures the train stage reports.

Reads and writes nothing; works with any tokenizer called like transformers' CLIPTokenizer.
Counts never include the start and end tokens (a 75-token caption fills one 77-token chunk).

Why a caption's count is the sum of its tags' counts: CLIP's tokenizer lower-cases the text,
then splits it at whitespace (and into runs of letters, digits and other characters) before
BPE merges anything, so no token spans a space. With a separator that ends in whitespace
(", "), the text `a, b, c` is the tokens of "a," and "b," and "c": each tag counted with the
separator's text glued to it, the last tag alone. A tag ending in punctuation ("^_^") merges
with the comma into one run ("^_^,"), which is why the glued form is counted, not tag + 1.
With any other separator the sum is only an estimate, and the cut checks the real count.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import polars as pl

from kohaku.train.config import CHUNK_TOKENS, CaptionConfig


class TagLengths:
    """Token counts of tags under one tokenizer, learned in batches and cached, and of the
    captions they make when joined by `separator`."""

    def __init__(self, tokenizer, separator: str = ", ") -> None:
        self.tokenizer, self.separator = tokenizer, separator
        # the Rust tokenizer itself counts about twice as fast as the transformers call; a
        # copy, since a caller's truncation or padding settings stay on the shared one
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = copy.deepcopy(backend) if backend is not None else None
        if self._backend is not None:
            self._backend.no_truncation()
            self._backend.no_padding()
        self.glue = separator.rstrip()  # what sticks to a tag before the next one
        self.additive = separator != self.glue  # separator ends in whitespace: sums are exact
        self._glued: dict[str, int] = {}  # tokens of tag + glue
        self._alone: dict[str, int] = {}  # tokens of tag

    def learn(self, tags: Iterable[str]) -> None:
        """Count the tags not seen yet, in one batched tokenizer call."""
        new = list(dict.fromkeys(t for t in tags if t not in self._alone))
        if not new:
            return
        counts = self.count_texts([t + self.glue for t in new] + new)
        self._glued.update(zip(new, counts[: len(new)], strict=True))
        self._alone.update(zip(new, counts[len(new) :], strict=True))

    def count_texts(self, texts: list[str]) -> list[int]:
        """The tokenizer's own counts (verbose off: no warning for texts over 77 tokens)."""
        if not texts:
            return []
        if self._backend is not None:
            return [len(e.ids) for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        ids = self.tokenizer(texts, add_special_tokens=False, verbose=False).input_ids
        return [len(i) for i in ids]

    def known(self, tag: str) -> bool:
        """Whether `tag` was counted (`learn`)."""
        return tag in self._alone

    def glued(self, tag: str) -> int:
        return self._glued[tag]

    def alone(self, tag: str) -> int:
        return self._alone[tag]

    def caption(self, tags: Sequence[str]) -> int:
        """Tokens of `separator.join(tags)`: exact when `additive`, else an estimate."""
        self.learn(tags)
        if not tags:
            return 0
        return sum(self._glued[t] for t in tags[:-1]) + self._alone[tags[-1]]


@dataclass(frozen=True)
class Fitted:
    """The body tags kept by a cut, the text kept (None: none), and whether the caption
    lost anything."""

    body: list[str]
    cut: bool
    text: str | None = None


# a sentence ends at ., ! or ? followed by whitespace (Florence-2 writes plain prose)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class TagBudget:
    """At most `max_tokens` caption tokens, cut at tag boundaries: body tags go from the end
    of the (shuffled) body until the caption fits; head and tail tags always stay.

    A natural-language `text` is kept whole while body tags remain to drop (tags are what a
    text repeats; a text cut mid-way says something else); then it loses whole sentences
    from its end and, when its first sentence alone is too long, words from that sentence's
    end. A caption whose head and tail alone are too long is left whole, its text cut to
    nothing: the encoder cuts its last tokens."""

    lengths: TagLengths
    max_tokens: int

    @classmethod
    def of(cls, tokenizer, cfg: CaptionConfig) -> TagBudget:
        return cls(TagLengths(tokenizer, cfg.separator), cfg.max_tokens)

    def fit(
        self, head: Sequence[str], body: Sequence[str], tail: Sequence[str],
        text: str | None = None, text_first: bool = False,
    ) -> Fitted:  # fmt: skip
        """The cut of the caption `head, body, tail`, or with `text`: `head, body, text,
        tail` (`head, text, body, tail` when `text_first`)."""
        n = self.lengths
        n.learn([*head, *body, *tail])
        before, after = _around(head, tail, text, text_first)
        keep = self._fitting(before, body, after)
        if not n.additive:  # the sums were estimates: drop more until the real count fits
            while keep and self._real(before, body[:keep], after) > self.max_tokens:
                keep -= 1
        over = keep == 0 and self._real(before, [], after) > self.max_tokens
        if over and text:  # the body is gone: shorten the text
            return Fitted([], True, _shorten(text, lambda t: self._fits(head, tail, t, text_first)))
        return Fitted(list(body[:keep]), keep < len(body) or over, text)

    def _fits(self, head: Sequence[str], tail: Sequence[str], text: str, text_first: bool
              ) -> bool:  # fmt: skip
        before, after = _around(head, tail, text, text_first)
        return self._real(before, [], after) <= self.max_tokens

    def _fitting(self, before: Sequence[str], body: Sequence[str], after: Sequence[str]) -> int:
        """The most body tags (a prefix) whose caption fits, in one pass over the body."""
        n = self.lengths
        counts = [self._counts(t) for t in (*before, *after)]  # a text is tokenized once
        fixed = sum(glued for glued, _ in counts)
        prefix = [0, *accumulate(n.glued(t) for t in body)]
        for keep in range(len(body), 0, -1):
            # the caption's last item is counted alone (no separator after it)
            last = counts[-1] if after else (n.glued(body[keep - 1]), n.alone(body[keep - 1]))
            if fixed + prefix[keep] - last[0] + last[1] <= self.max_tokens:
                return keep
        return 0

    def _counts(self, item: str) -> tuple[int, int]:
        """(with the separator's glue, alone): a tag's cached counts; a text's (not cached:
        every post has its own) counted now."""
        n = self.lengths
        if n.known(item):
            return n.glued(item), n.alone(item)
        glued, alone = n.count_texts([item + n.glue, item])
        return glued, alone

    def _real(self, before: Sequence[str], body: Sequence[str], after: Sequence[str]) -> int:
        items, n = [*before, *body, *after], self.lengths
        if n.additive and all(n.known(t) for t in items):
            return n.caption(items)
        return n.count_texts([n.separator.join(items)])[0] if items else 0


def _around(head: Sequence[str], tail: Sequence[str], text: str | None, text_first: bool
            ) -> tuple[list[str], list[str]]:  # fmt: skip
    """What comes before and after the body: head (+ text) and (text +) tail."""
    if not text:
        return list(head), list(tail)
    return ([*head, text], list(tail)) if text_first else (list(head), [text, *tail])


def _shorten(text: str, fits) -> str | None:
    """The longest start of `text` that `fits`: whole sentences, else the first sentence's
    first words; None when not even one word fits."""
    sentences = _SENTENCE_END.split(text)
    for k in range(len(sentences) - 1, 0, -1):
        if fits(start := " ".join(sentences[:k])):
            return start
    words = sentences[0].split(" ")
    lo, hi = 0, len(words) - 1  # words[:lo] fits (or lo = 0); words[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(" ".join(words[:mid])) else (lo, mid - 1)
    return " ".join(words[:lo]) or None


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class TokenStats:
    """Token counts of the full captions (every tag, no dropout) of a run."""

    captions: int
    max_tokens: int  # the configured maximum
    tokens_max: int
    tokens_p50: float
    tokens_p90: float
    over_75: int  # captions longer than one chunk
    over_max: int  # captions that lose body tags to the cut

    def as_counts(self) -> dict[str, int | float]:
        """The train manifest's `counts` entries."""
        return {"captions": self.captions, "caption_max_tokens": self.max_tokens,
                "caption_tokens_max": self.tokens_max, "caption_tokens_p50": self.tokens_p50,
                "caption_tokens_p90": self.tokens_p90, "captions_over_75_tokens": self.over_75,
                "captions_over_max_tokens": self.over_max}  # fmt: skip


def caption_tokens(parts: pl.DataFrame, lengths: TagLengths) -> np.ndarray:
    """Token count of each row's full caption (head, body and tail lists joined). Every
    distinct tag is tokenized once; the per-caption sums run in Polars."""
    tags = pl.concat_list(*(pl.col(c).cast(pl.List(pl.String)) for c in ("head", "body", "tail")))
    lists = parts.select(tags=tags)["tags"]
    if not lengths.additive:  # sums would be estimates: tokenize every caption
        return np.array(lengths.count_texts(lists.list.join(lengths.separator).to_list()))
    distinct = lists.explode().drop_nulls().unique().to_list()
    lengths.learn(distinct)
    glued = {t: lengths.glued(t) for t in distinct}
    adjust = {t: lengths.alone(t) - lengths.glued(t) for t in distinct}
    total = lists.list.eval(pl.element().replace_strict(glued, return_dtype=pl.Int64)).list.sum()
    last = lists.list.last().replace_strict(adjust, default=0, return_dtype=pl.Int64)
    return (total + last).fill_null(0).to_numpy()


def token_stats(parts: pl.DataFrame, lengths: TagLengths, max_tokens: int) -> TokenStats:
    counts = caption_tokens(parts, lengths)
    if len(counts) == 0:
        return TokenStats(0, max_tokens, 0, 0.0, 0.0, 0, 0)
    p50, p90 = (float(v) for v in np.percentile(counts, [50, 90]))
    return TokenStats(
        captions=len(counts), max_tokens=max_tokens, tokens_max=int(counts.max()),
        tokens_p50=p50, tokens_p90=p90, over_75=int((counts > CHUNK_TOKENS).sum()),
        over_max=int((counts > max_tokens).sum()),
    )  # fmt: skip
