"""The data side of the train stage: the items, per-step captions, and the tensors of one
batch (the batch order, with the sample's repeats, is `kohaku.train.order`).

Reads `<run>/buckets/manifest.parquet` (id, run-relative path, original size, bucket, crop),
`<run>/tag/captions.parquet` (the tag groups; `kohaku.tag.captions.lay_out` derives the
head/body/tail lists; `text`, the natural-language captions, when the tag stage joined any),
`<run>/sample/posts.parquet` (`id`, `repeats`: how often each image is shown per epoch, by
its range or subset; a run dir without it shows each image once) and the images under
`<run>/download/images/`, which the download stage already resized and
cropped to their bucket (`kohaku.train.images` decodes them; a batch carries them as uint8,
and none at all when its latents come from the cache). Writes nothing.
`kohaku.train.loader` runs `load_batch` in worker processes.

Captions are drawn from `caption_rng(seed, epoch, post id[, repeat])` (`kohaku.train.order`
says why the raw PCG64 stream), so a resumed run rebuilds exactly the captions the
interrupted one would have, on any rank and in any worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from kohaku.errors import ConfigError, InputError
from kohaku.tag import LAYOUTS, lay_out
from kohaku.train.config import CaptionConfig, CaptionKind
from kohaku.train.images import read_batch
from kohaku.train.order import (  # noqa: F401  (the order's names, as callers import them)
    CAPTION_DOMAIN,
    Batch,
    BucketBatches,
    DataPosition,
    GlobalOrder,
    generator,
    uniform,
)
from kohaku.train.tokens import TagBudget

if TYPE_CHECKING:
    import torch

    from kohaku.train.latents import Posterior

BUCKET_COLUMNS = ["id", "path", "orig_w", "orig_h", "bucket_w", "bucket_h", "crop_left", "crop_top"]
PARTS = ["head", "body", "tail"]
_PARTS_SCHEMA = {p: pl.List(pl.String) for p in PARTS}


# ---------------------------------------------------------------- items


@dataclass(frozen=True, eq=False)
class BucketItems:
    """The training images, one row each, sorted by id. Sizes are (width, height), the
    crop is (left, top) in the resized image. Paths and caption parts stay in Polars
    (Arrow) columns: millions of Python strings would cost gigabytes per rank."""

    ids: np.ndarray  # int64 [N], ascending, unique
    bucket: np.ndarray  # int64 [N, 2] (width, height)
    original_size: np.ndarray  # int64 [N, 2] (width, height)
    crop: np.ndarray  # int64 [N, 2] (left, top)
    paths: pl.Series  # relative to the run dir
    parts: pl.DataFrame  # head, body, tail lists of caption text
    keep_separator: str | None = None  # the layout's (hakubooru: "|||"); never in a caption
    budget: TagBudget | None = None  # max caption tokens; the trainer sets it (tokenizer)
    texts: pl.Series | None = None  # natural-language caption or null per row; None: no texts
    repeats: np.ndarray | None = None  # int64 [N] showings per epoch (>= 1); None: each once

    def __post_init__(self) -> None:
        n = len(self.ids)
        columns = (self.bucket, self.original_size, self.crop, self.paths)
        optional = tuple(c for c in (self.texts, self.repeats) if c is not None)
        if any(len(a) != n for a in columns + optional):
            raise ValueError("BucketItems: every column needs one row per id")
        if self.repeats is not None and n and int(np.min(self.repeats)) < 1:
            raise ValueError("BucketItems: repeats must be >= 1")
        if self.parts.height != n or self.parts.columns != PARTS:
            raise ValueError(f"BucketItems: parts needs columns {PARTS} and {n} rows")
        if n and not bool(np.all(np.diff(self.ids) > 0)):
            raise ValueError("BucketItems: ids must be unique and ascending")

    def rows(self, ids: Sequence[int]) -> np.ndarray:
        """Row index of each id; KeyError for an id that is not an item."""
        want = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, want).clip(0, max(len(self.ids) - 1, 0))
        absent = want[self.ids[rows] != want] if len(self.ids) else want
        if len(absent):
            raise KeyError(f"ids not among the items: {absent.tolist()}")
        return rows


def load_items(
    buckets_manifest: Path, captions: Path | None, layout: str = "epsilon",
    posts: Path | None = None,
) -> BucketItems:  # fmt: skip
    """Read the buckets stage's `manifest.parquet` and, when `captions` is given, the tag
    stage's `captions.parquet` laid out by `layout` (the run's `tag.layout`); when `posts`
    is given, the sample stage's `posts.parquet` for each image's `repeats` (`posts_file`).
    Without captions every caption is empty; without posts every image is shown once."""
    _check_columns(Path(buckets_manifest), BUCKET_COLUMNS, "run `kohaku buckets` first")
    frame = pl.read_parquet(buckets_manifest, columns=BUCKET_COLUMNS).sort("id")
    if frame["id"].is_duplicated().any():
        raise InputError(f"{buckets_manifest}: duplicate ids; rebuild the buckets stage")
    texts = None
    if captions is None:
        parts = pl.DataFrame({p: [[]] * frame.height for p in PARTS}, schema=_PARTS_SCHEMA)
    else:
        parts = _read_parts(Path(captions), layout, frame["id"])
        if "text" in parts.columns:  # a tag stage from before issue 14 has none
            texts, parts = parts["text"], parts.drop("text")
    return BucketItems(
        ids=frame["id"].to_numpy().astype(np.int64), bucket=_pairs(frame, "bucket_w", "bucket_h"),
        original_size=_pairs(frame, "orig_w", "orig_h"),
        crop=_pairs(frame, "crop_left", "crop_top"), paths=frame["path"], parts=parts,
        keep_separator=LAYOUTS[layout].keep_separator if captions is not None else None,
        texts=texts, repeats=None if posts is None else _read_repeats(Path(posts), frame["id"]),
    )  # fmt: skip


def posts_file(run_dir: Path) -> Path | None:
    """The sample stage's `posts.parquet` of `run_dir`, or None when the run has none
    (images and tags made without the sample stage: each image is shown once)."""
    path = Path(run_dir) / "sample" / "posts.parquet"
    return path if path.is_file() else None


def _read_repeats(path: Path, ids: pl.Series) -> np.ndarray | None:
    """Each id's `repeats` from the sample stage's posts, in the order of `ids`; None when
    all are 1 (or the file predates repeats), so such a run is exactly a run without them."""
    fix = "rebuild the sample stage (`kohaku sample`) and the stages after it"
    _check_columns(path, ["id"], fix)
    if "repeats" not in pl.read_parquet_schema(path):  # a sample stage before issue 14
        return None
    frame = _rows_of(ids, pl.scan_parquet(path).select("id", "repeats"), "repeats", path, fix,
                     f"are not among the posts of {path}", ": the sample changed since the "
                     "images were fetched; rebuild the download and buckets stages")  # fmt: skip
    repeats = frame["repeats"].to_numpy().astype(np.int64)
    if len(repeats) and int(repeats.min()) < 1:
        raise InputError(f"{path}: repeats below 1; {fix}")
    return None if bool(np.all(repeats == 1)) else repeats


def check_texts(items: BucketItems, cfg: CaptionConfig, captions: Path) -> None:
    """A config that draws texts (p_text or p_both > 0) needs images with texts: one
    ConfigError before training when none has one (no tag.text_captions, or its ids match
    none of the images)."""
    if not cfg.uses_text:
        return
    with_text = 0 if items.texts is None else len(items.ids) - items.texts.null_count()
    if with_text == 0:
        raise ConfigError(
            f"train.captions.p_text / p_both draw natural-language captions, but none of the "
            f"{len(items.ids)} images has a text in {captions}: set tag.text_captions and "
            "rebuild the tag stage (`kohaku tag`), or set train.captions.p_tags = 1"
        )


def with_budget(items: BucketItems, tokenizer, cfg: CaptionConfig) -> BucketItems:
    """`items` whose captions are cut to `cfg.max_tokens` tokens of `tokenizer` (SDXL's two
    tokenizers share one BPE, so the first one counts for both)."""
    return replace(items, budget=TagBudget.of(tokenizer, cfg))


def _pairs(frame: pl.DataFrame, first: str, second: str) -> np.ndarray:
    return frame.select(first, second).to_numpy().astype(np.int64)


def _check_columns(path: Path, columns: list[str], fix: str) -> None:
    if not path.is_file():
        raise InputError(f"{path} does not exist: {fix}")
    missing = [c for c in columns if c not in pl.read_parquet_schema(path)]
    if missing:
        raise InputError(f"{path} lacks columns {missing}: {fix}")


def _read_parts(path: Path, layout: str, ids: pl.Series) -> pl.DataFrame:
    """head/body/tail of every id, in the order of `ids`; InputError when any lacks one."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown caption layout {layout!r}; one of {sorted(LAYOUTS)}")
    spec = LAYOUTS[layout]
    groups = {"rating_tags" if g == "rating" else g for g in spec.head + spec.body + spec.tail}
    _check_columns(path, ["id", *sorted(groups)], "rebuild the tag stage (`kohaku tag`)")
    text = ["text"] if "text" in pl.read_parquet_schema(path) else []
    scan = pl.scan_parquet(path).select("id", *sorted(groups), *text)
    scan = scan.join(pl.LazyFrame({"id": ids}), on="id", how="semi")
    laid = lay_out(scan, layout).select("id", *PARTS, *text)
    fix = "rebuild the tag stage"
    parts = _rows_of(ids, laid, "head", path, fix, f"have no caption in {path}", f"; {fix}")
    return parts.select(*PARTS, *text)


def _rows_of(ids: pl.Series, found: pl.LazyFrame, column: str, path: Path, fix: str,
             absent: str, absent_fix: str) -> pl.DataFrame:  # fmt: skip
    """The rows of `found` for `ids`, in their order. InputError when the file holds an id
    twice (`fix`) or when an id has none (`column` null: the images `absent`, `absent_fix`)."""
    frame = pl.LazyFrame({"id": ids}).join(found, on="id", how="left", maintain_order="left")
    frame = frame.collect()
    if frame.height != len(ids):
        raise InputError(f"{path}: duplicate ids; {fix}")
    missing = frame.filter(pl.col(column).is_null())["id"]
    if len(missing):
        raise InputError(f"{len(missing)} of {len(ids)} images in the buckets manifest {absent} "
                         f"(first ids: {missing.head(5).to_list()}){absent_fix}")  # fmt: skip
    return frame


# ---------------------------------------------------------------- captions


def caption_rng(seed: int, epoch: int, post_id: int, repeat: int = 0) -> np.random.Generator:
    """The generator of one post's caption in one epoch, at its `repeat`-th showing: a
    resumed run rebuilds exactly the captions the interrupted one would have. The repeat
    joins the key only from 1 on, so the first showing draws what a run without repeats
    draws."""
    return generator(CAPTION_DOMAIN, seed, epoch, post_id, *((repeat,) if repeat else ()))


@dataclass(frozen=True)
class Caption:
    """One step's caption text; whether the token budget cut body tags (or sentences of the
    text) from it; its kind (tags, text or both; "" when dropped whole) and whether a kind
    with text fell back to the tags because the post has none."""

    text: str
    cut: bool = False
    kind: CaptionKind | str = "tags"
    fallback: bool = False


def make_caption(
    head: Sequence[str],
    body: Sequence[str],
    tail: Sequence[str],
    cfg: CaptionConfig,
    rng: np.random.Generator,
    budget: TagBudget | None = None,
    text: str | None = None,
) -> str:
    """One step's caption text (`draw_caption`)."""
    return draw_caption(head, body, tail, cfg, rng, budget, text).text


def draw_caption(
    head: Sequence[str],
    body: Sequence[str],
    tail: Sequence[str],
    cfg: CaptionConfig,
    rng: np.random.Generator,
    budget: TagBudget | None = None,
    text: str | None = None,
) -> Caption:
    """One step's caption: head and tail tags in place and always kept, body tags shuffled
    and each dropped with `tag_dropout`; "" with `caption_dropout`. With a `budget`, body
    tags then go from the end until the caption fits `max_tokens`. The draws are the same
    whatever the config, so changing one setting does not reshuffle the others.

    With the post's natural-language `text`, one more draw picks the kind (`cfg.kind`):
    the tags; the text in place of the body tags (`head, text, tail`, Kohaku XL Zeta's
    prompt format); or both (`head, body, text, tail`, or the text before the body). It is
    drawn after the others, so the tags of a caption are those drawn without texts; a post
    without text falls back to its tags (`fallback`). The budget drops body tags before
    it shortens the text (`TagBudget`).

    The tags are joined by `separator` and nothing else: a layout's keep separator (hakubooru
    `|||`) only says where the kept head ends, which `head` already says. It is no token, and
    kohya sd-scripts strips it too, so it never reaches a text encoder."""
    n = len(body)
    draws = uniform(rng, 2 + 2 * n)  # PCG64's first 1 + 2n draws are those of before
    blank, keys, drop, pick = draws[0], draws[1 : 1 + n], draws[1 + n : 1 + 2 * n], draws[-1]
    if blank < cfg.caption_dropout:
        return Caption("", kind="")
    kind = cfg.kind(float(pick))
    fallback = kind != "tags" and not text
    kind, text = ("tags", None) if fallback or kind == "tags" else (kind, text)
    order = np.argsort(keys, kind="stable") if cfg.shuffle else range(n)
    kept = [] if kind == "text" else [body[i] for i in order if drop[i] >= cfg.tag_dropout]
    first, cut = cfg.text_position == "before_tags", False
    if budget is not None:
        fitted = budget.fit(head, kept, tail, text, first)
        kept, cut, text = fitted.body, fitted.cut, fitted.text
    words = [text] if text else []
    items = [*head, *words, *kept, *tail] if first else [*head, *kept, *words, *tail]
    return Caption(cfg.separator.join(items), cut, kind, fallback)


def draw_captions(
    items: BucketItems, rows: np.ndarray, batch: Batch, cfg: CaptionConfig, seed: int
) -> list[Caption]:
    """The captions of a micro-batch, each from its post's generator of the epoch and
    showing, cut to the items' token budget when they have one."""
    parts = items.parts[rows].rows()
    texts = [None] * len(rows) if items.texts is None else items.texts.gather(rows).to_list()
    keys = zip(batch.ids, batch.repeat, strict=True)
    return [draw_caption(*p, cfg, caption_rng(seed, batch.epoch, i, r), items.budget, t)
            for p, t, (i, r) in zip(parts, texts, keys, strict=True)]  # fmt: skip


def example_captions(
    captions: Path, layout: str, cfg: CaptionConfig, seed: int = 0, n: int = 3
) -> list[tuple[int, Caption]]:
    """What training draws at epoch 0 (no token budget) for the first `n` posts of the tag
    stage's `captions.parquet` with a text and the first one without (its fallback): the
    demo prints them. Only the first `n` posts when there are no texts."""
    columns = pl.read_parquet_schema(captions)
    scan = pl.scan_parquet(captions).select("id", text=pl.col("text") if "text" in columns
                                            else pl.lit(None, pl.String))  # fmt: skip
    frame = scan.collect()
    has = frame.filter(pl.col("text").is_not_null())["id"].head(n)
    lacks = frame.filter(pl.col("text").is_null())["id"].head(n if has.is_empty() else 1)
    ids = pl.concat([has, lacks]).sort()
    parts = _read_parts(Path(captions), layout, ids)
    texts = frame.join(pl.DataFrame({"id": ids}), on="id", how="semi").sort("id")["text"]
    return [(i, draw_caption(*p, cfg, caption_rng(seed, 0, i), text=t))
            for i, p, t in zip(ids, parts.select(PARTS).rows(), texts, strict=True)]  # fmt: skip


# ---------------------------------------------------------------- tensors


@dataclass(frozen=True, eq=False)
class TrainBatch:
    """One rank's micro-batch, ready for SDXL: the position it was drawn at, its images as
    decoded (uint8, channels last: `loader.unit_pixels` converts them on the training
    device) or, from the latent cache, their VAE posteriors and no pixels. Sizes are
    (height, width), the order of SDXL's add_time_ids: (orig_h, orig_w, crop_top,
    crop_left, target_h, target_w)."""

    ids: tuple[int, ...]
    epoch: int
    index: int
    pixels: torch.Tensor | None  # uint8 [B, H, W, 3]; None when training from the cache
    captions: list[str]
    original_size: torch.Tensor  # int64 [B, 2]
    crop_top_left: torch.Tensor  # int64 [B, 2]
    target_size: torch.Tensor  # int64 [B, 2]
    captions_cut: int = 0  # captions the token budget cut (`draw_caption`)
    captions_text: int = 0  # captions of the text in place of the body tags
    captions_both: int = 0  # captions of the tags and the text
    captions_fallback: int = 0  # text or both drawn for a post without text: its tags
    posterior: Posterior | None = None  # float32 [B, C, h, w] mean and std, from the cache
    repeat: tuple[int, ...] = ()  # each sample's showing in the epoch (`Batch`); () = all 0

    @property
    def position(self) -> DataPosition:
        return DataPosition(self.epoch, self.index)

    def samples(self) -> list[tuple[int, int]]:
        """(post id, repeat) of each sample: the key of its noise and timestep draws."""
        return list(zip(self.ids, self.repeat or (0,) * len(self.ids), strict=True))

    def time_ids(self) -> torch.Tensor:
        """SDXL's add_time_ids, int64 [B, 6]."""
        import torch

        return torch.cat([self.original_size, self.crop_top_left, self.target_size], dim=1)

    def pin_memory(self) -> TrainBatch:
        """The same batch in page-locked memory (torch's DataLoader calls this in its pin
        thread), so that the copy to the GPU can overlap the computation."""
        post = self.posterior
        return replace(
            self, pixels=None if self.pixels is None else self.pixels.pin_memory(),
            posterior=None if post is None else type(post)(*(t.pin_memory() for t in post)),
        )  # fmt: skip


def load_batch(
    batch: Batch, items: BucketItems, run_dir: Path, cfg: CaptionConfig, seed: int,
    read_images: bool = True,
) -> TrainBatch:  # fmt: skip
    """Draw the batch's captions and open its images (already fitted to its bucket), unless
    `read_images` is False (the latents come from the cache: no file is opened)."""
    import torch

    rows = items.rows(batch.ids)
    pixels = None
    if read_images:
        paths = [Path(run_dir) / p for p in items.paths.gather(rows)]
        pixels = torch.from_numpy(read_batch(paths, batch.bucket))
    captions = draw_captions(items, rows, batch, cfg, seed)
    target = np.broadcast_to([batch.bucket[1], batch.bucket[0]], (len(rows), 2))
    return TrainBatch(
        ids=batch.ids, epoch=batch.epoch, index=batch.index, pixels=pixels, repeat=batch.repeat,
        captions=[c.text for c in captions], captions_cut=sum(c.cut for c in captions),
        captions_text=sum(c.kind == "text" for c in captions),
        captions_both=sum(c.kind == "both" for c in captions),
        captions_fallback=sum(c.fallback for c in captions),
        original_size=torch.from_numpy(items.original_size[rows][:, ::-1].copy()),
        crop_top_left=torch.from_numpy(items.crop[rows][:, ::-1].copy()),
        target_size=torch.tensor(target, dtype=torch.int64),
    )  # fmt: skip
