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
    """The body tags kept by a cut, and whether the caption lost anything."""

    body: list[str]
    cut: bool


@dataclass
class TagBudget:
    """At most `max_tokens` caption tokens, cut at tag boundaries: body tags go from the end
    of the (shuffled) body until the caption fits; head and tail tags always stay. A caption
    whose head and tail alone are too long is left whole: the encoder cuts its last tokens."""

    lengths: TagLengths
    max_tokens: int

    @classmethod
    def of(cls, tokenizer, cfg: CaptionConfig) -> TagBudget:
        return cls(TagLengths(tokenizer, cfg.separator), cfg.max_tokens)

    def fit(self, head: Sequence[str], body: Sequence[str], tail: Sequence[str]) -> Fitted:
        n = self.lengths
        n.learn([*head, *body, *tail])
        keep = self._fitting(head, body, tail)
        if not n.additive:  # the sums were estimates: drop more until the real count fits
            while keep and self._real(head, body[:keep], tail) > self.max_tokens:
                keep -= 1
        over = keep == 0 and self._real(head, [], tail) > self.max_tokens
        return Fitted(list(body[:keep]), keep < len(body) or over)

    def _fitting(self, head: Sequence[str], body: Sequence[str], tail: Sequence[str]) -> int:
        """The most body tags (a prefix) whose caption fits, in one pass over the body."""
        n = self.lengths
        fixed = sum(n.glued(t) for t in (*head, *tail))
        prefix = [0, *accumulate(n.glued(t) for t in body)]
        for keep in range(len(body), 0, -1):
            last = tail[-1] if tail else body[keep - 1]
            if fixed + prefix[keep] - n.glued(last) + n.alone(last) <= self.max_tokens:
                return keep
        return 0

    def _real(self, head: Sequence[str], body: Sequence[str], tail: Sequence[str]) -> int:
        tags = [*head, *body, *tail]
        if self.lengths.additive:
            return self.lengths.caption(tags)
        return self.lengths.count_texts([self.lengths.separator.join(tags)])[0]


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
