"""The data side of the train stage: bucketed batch order with exact resume, per-step
captions, and the tensors of one batch.

Reads `<run>/buckets/manifest.parquet` (id, run-relative path, original size, bucket, crop),
`<run>/tag/captions.parquet` (the tag groups; `kohaku.tag.captions.lay_out` derives the
head/body/tail lists; `text`, the natural-language captions, when the tag stage joined any)
and the images under `<run>/download/images/`, which the download stage already resized and
cropped to their bucket (`kohaku.train.images` decodes them; a batch carries them as uint8,
and none at all when its latents come from the cache). Writes nothing.
`kohaku.train.loader` runs `load_batch` in worker processes.

Determinism. Every random choice comes from a PCG64 bit generator seeded through a
`SeedSequence` of (domain, seed, epoch[, post id]), and only its raw 64-bit output is used:
a permutation is the stable argsort of raw draws, a uniform is the top 53 bits of one. NumPy
keeps PCG64's raw stream fixed for a fixed seed across versions and machines (the PCG64
docstring's compatibility guarantee), while `Generator` methods such as `permutation` only
promise the same stream on the same build of NumPy (numpy.random compatibility policy,
NEP 19), so they are not used. The order therefore depends on nothing but the items, the
seed, the epoch and the global batch size: not on the manifest's row order, the rank, the
NumPy version or the machine.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from kohaku.errors import ConfigError, InputError
from kohaku.tag import LAYOUTS, lay_out
from kohaku.train.config import CaptionConfig, CaptionKind
from kohaku.train.images import read_batch
from kohaku.train.tokens import TagBudget

if TYPE_CHECKING:
    import torch

    from kohaku.train.latents import Posterior

log = logging.getLogger(__name__)
ORDER_VERSION = "1"  # bump when the batch order of the same inputs changes
_ORDER_DOMAIN, _CAPTION_DOMAIN = 1, 2  # keep the order and caption streams apart
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

    def __post_init__(self) -> None:
        n = len(self.ids)
        columns = (self.bucket, self.original_size, self.crop, self.paths)
        if any(len(a) != n for a in columns + (() if self.texts is None else (self.texts,))):
            raise ValueError("BucketItems: every column needs one row per id")
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
    buckets_manifest: Path, captions: Path | None, layout: str = "epsilon"
) -> BucketItems:
    """Read the buckets stage's `manifest.parquet` and, when `captions` is given, the tag
    stage's `captions.parquet` laid out by `layout` (the run's `tag.layout`). Without
    captions every caption is empty."""
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
        texts=texts,
    )  # fmt: skip


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
    wanted = pl.LazyFrame({"id": ids})
    scan = pl.scan_parquet(path).select("id", *sorted(groups), *text)
    scan = scan.join(wanted, on="id", how="semi")
    laid = lay_out(scan, layout).select("id", *PARTS, *text)
    parts = wanted.join(laid, on="id", how="left", maintain_order="left").collect()
    if parts.height != len(ids):
        raise InputError(f"{path}: duplicate ids; rebuild the tag stage")
    missing = parts.filter(pl.col("head").is_null())["id"]
    if len(missing):
        raise InputError(
            f"{len(missing)} of {len(ids)} images in the buckets manifest have no caption in "
            f"{path} (first ids: {missing.head(5).to_list()}); rebuild the tag stage"
        )
    return parts.select(*PARTS, *text)


# ---------------------------------------------------------------- batch order


@dataclass(frozen=True, order=True)
class DataPosition:
    """Where the data stands: `index` is the next global micro-batch within `epoch`.
    Stored in a checkpoint's sidecar (`dataclasses.asdict`, `DataPosition(**d)`)."""

    epoch: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.index < 0:
            raise ValueError(f"DataPosition needs epoch >= 0 and index >= 0, got {self}")


@dataclass(frozen=True)
class Batch:
    """One rank's micro-batch: its ids, all from one `bucket` (width, height), and the
    position of the global micro-batch it belongs to."""

    ids: tuple[int, ...]
    bucket: tuple[int, int]
    epoch: int
    index: int


@dataclass(frozen=True, eq=False)
class GlobalOrder:
    """An epoch's global micro-batches: `ids[k]` (all ranks' items) from bucket `bucket[k]`."""

    ids: np.ndarray  # int64 [K, batch_size * world_size]
    bucket: np.ndarray  # int64 [K, 2] (width, height)


class BucketBatches:
    """The deterministic, resumable order of one rank's micro-batches.

    Per epoch: each bucket's ids are shuffled by (seed, epoch), cut into global batches of
    `batch_size * world_size` (a bucket's incomplete remainder is left out of that epoch,
    see `dropped_per_epoch`), and the batches of all buckets are shuffled by (seed, epoch).
    Rank r takes items [r * batch_size, (r + 1) * batch_size) of every global batch, so all
    ranks step through the same buckets together. The global order depends only on the
    global batch size: 1 rank with batch B sees what 2 ranks with B/2 see together."""

    def __init__(
        self, items: BucketItems, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        _check_ranks(batch_size, world_size, rank, seed)
        self.batch_size, self.world_size, self.rank, self.seed = batch_size, world_size, rank, seed
        self.global_batch = batch_size * world_size
        self.buckets, self._groups = _group_by_bucket(items)
        sizes = np.array([len(g) for g in self._groups], dtype=np.int64)
        self.batches_per_epoch = int((sizes // self.global_batch).sum())
        self.dropped_per_epoch = int((sizes % self.global_batch).sum())
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"no batch possible: batch_size * world_size = {self.global_batch} exceeds "
                f"every bucket (the largest holds {int(sizes.max(initial=0))} images)"
            )
        log.info("data: %d batches of %d per epoch; %d of %d images left out (incomplete "
                 "batches of their bucket)", self.batches_per_epoch, self.global_batch,
                 self.dropped_per_epoch, int(sizes.sum()))  # fmt: skip
        self._cache: tuple[int, GlobalOrder] | None = None

    def global_order(self, epoch: int) -> GlobalOrder:
        """Every rank's micro-batches of `epoch` (the last epoch asked is cached)."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, _shuffle_epoch(self._groups, self.buckets, self.seed, epoch,
                                                 self.global_batch))  # fmt: skip
        return self._cache[1]

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """This rank's micro-batches of `epoch`, in order."""
        order = self.global_order(epoch)
        return [self._batch(order, epoch, k) for k in range(self.batches_per_epoch)]

    def iterate(
        self, start: DataPosition | None = None, stop_epoch: int | None = None
    ) -> Iterator[tuple[DataPosition, Batch]]:
        """(position, batch) from `start` (default: the very beginning) on, across epochs,
        until `stop_epoch` (exclusive; None: forever). Resume from `next_position` of the
        last batch trained on."""
        pos = self.normalize(start if start is not None else DataPosition())
        epoch, index = pos.epoch, pos.index
        while stop_epoch is None or epoch < stop_epoch:
            order = self.global_order(epoch)
            for k in range(index, self.batches_per_epoch):
                yield DataPosition(epoch, k), self._batch(order, epoch, k)
            epoch, index = epoch + 1, 0

    def next_position(self, pos: DataPosition) -> DataPosition:
        """The position after the batch at `pos` (the first of the next epoch at its end)."""
        return self.normalize(DataPosition(pos.epoch, pos.index + 1))

    def normalize(self, pos: DataPosition) -> DataPosition:
        """`pos` with an index at the epoch's end moved to the start of the next epoch."""
        if pos.index > self.batches_per_epoch:
            raise ValueError(f"{pos} is past the epoch's {self.batches_per_epoch} batches")
        if pos.index == self.batches_per_epoch:
            return DataPosition(pos.epoch + 1, 0)
        return pos

    def fingerprint(self) -> str:
        """What the global order depends on (items, buckets, seed, global batch, version):
        store it with a checkpoint and resume only when it matches."""
        digest = hashlib.sha256(f"{ORDER_VERSION}/{self.seed}/{self.global_batch}".encode())
        for bucket, ids in zip(self.buckets, self._groups, strict=True):
            digest.update(np.asarray(bucket, dtype=np.int64).tobytes() + ids.tobytes())
        return digest.hexdigest()[:16]

    def _batch(self, order: GlobalOrder, epoch: int, k: int) -> Batch:
        lo = self.rank * self.batch_size
        ids = tuple(int(i) for i in order.ids[k, lo : lo + self.batch_size])
        width, height = (int(v) for v in order.bucket[k])
        return Batch(ids=ids, bucket=(width, height), epoch=epoch, index=k)


def _check_ranks(batch_size: int, world_size: int, rank: int, seed: int) -> None:
    if batch_size < 1 or world_size < 1:
        raise ConfigError(f"batch_size ({batch_size}) and world_size ({world_size}) must be >= 1")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is out of range for world_size {world_size}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")


def _group_by_bucket(items: BucketItems) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """Buckets sorted by (width, height) and the ascending ids of each."""
    if len(items.ids) == 0:
        return [], []
    bucket = np.asarray(items.bucket, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((items.ids, bucket[:, 1], bucket[:, 0]))
    keys, starts = np.unique(bucket[order], axis=0, return_index=True)
    groups = np.split(np.asarray(items.ids, dtype=np.int64)[order], starts[1:])
    return [(int(w), int(h)) for w, h in keys], groups


def _shuffle_epoch(
    groups: list[np.ndarray], buckets: list[tuple[int, int]], seed: int, epoch: int, size: int
) -> GlobalOrder:
    rng = _rng(_ORDER_DOMAIN, seed, epoch)
    chunks, owners = [], []
    for b, ids in enumerate(groups):
        shuffled = ids[_permutation(rng, len(ids))]  # drawn for every bucket, full or not
        k = len(ids) // size
        chunks.append(shuffled[: k * size].reshape(k, size))
        owners.append(np.full(k, b, dtype=np.int64))
    batches, owner = np.concatenate(chunks), np.concatenate(owners)
    perm = _permutation(rng, len(batches))
    return GlobalOrder(ids=batches[perm], bucket=np.asarray(buckets, dtype=np.int64)[owner[perm]])


# ---------------------------------------------------------------- randomness


def _rng(*entropy: int) -> np.random.Generator:
    if any(e < 0 for e in entropy):
        raise ValueError(f"seed, epoch and post id must be >= 0, got {entropy[1:]}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(entropy))))


def _permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """A permutation of range(n) from raw PCG64 output (stable across NumPy versions)."""
    return np.argsort(rng.bit_generator.random_raw(n), kind="stable")


def _uniform(rng: np.random.Generator, n: int) -> np.ndarray:
    """n floats in [0, 1) from raw PCG64 output (top 53 bits)."""
    return (rng.bit_generator.random_raw(n) >> np.uint64(11)) * (1.0 / 2**53)


def caption_rng(seed: int, epoch: int, post_id: int) -> np.random.Generator:
    """The generator of one post's caption in one epoch: a post is drawn once per epoch,
    so a resumed run rebuilds exactly the captions the interrupted one would have."""
    return _rng(_CAPTION_DOMAIN, seed, epoch, post_id)


# ---------------------------------------------------------------- captions


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
    draws = _uniform(rng, 2 + 2 * n)  # PCG64's first 1 + 2n draws are those of before
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
    """The captions of a micro-batch, each from its post's generator of the epoch, cut to
    the items' token budget when they have one."""
    parts = items.parts[rows].rows()
    texts = [None] * len(rows) if items.texts is None else items.texts.gather(rows).to_list()
    return [draw_caption(*p, cfg, caption_rng(seed, batch.epoch, i), items.budget, t)
            for p, t, i in zip(parts, texts, batch.ids, strict=True)]  # fmt: skip


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

    @property
    def position(self) -> DataPosition:
        return DataPosition(self.epoch, self.index)

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
        ids=batch.ids, epoch=batch.epoch, index=batch.index, pixels=pixels,
        captions=[c.text for c in captions], captions_cut=sum(c.cut for c in captions),
        captions_text=sum(c.kind == "text" for c in captions),
        captions_both=sum(c.kind == "both" for c in captions),
        captions_fallback=sum(c.fallback for c in captions),
        original_size=torch.from_numpy(items.original_size[rows][:, ::-1].copy()),
        crop_top_left=torch.from_numpy(items.crop[rows][:, ::-1].copy()),
        target_size=torch.tensor(target, dtype=torch.int64),
    )  # fmt: skip
