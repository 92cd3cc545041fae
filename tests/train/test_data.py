"""The train stage's data side: batch order and resume, captions, items and batch tensors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pydantic
import pytest
import torch
from PIL import Image

from kohaku.errors import InputError
from kohaku.tagging.captions import lay_out
from kohaku.train.data import (
    PARTS,
    Batch,
    BucketBatches,
    BucketItems,
    CaptionConfig,
    DataPosition,
    caption_rng,
    load_batch,
    load_items,
    make_caption,
)
from kohaku.train.loader import unit_pixels

# bucket (width, height) -> images; sizes chosen so that remainders are dropped
SIZES = {(8, 16): 11, (16, 16): 17, (16, 8): 6, (24, 8): 2}


def make_items(sizes: dict[tuple[int, int], int] = SIZES) -> BucketItems:
    """Sparse ids, buckets interleaved over the ids (as in a real manifest)."""
    buckets = [b for b, n in sizes.items() for _ in range(n)]
    buckets = [buckets[i] for i in np.random.default_rng(0).permutation(len(buckets))]
    n = len(buckets)
    return BucketItems(
        ids=np.arange(n, dtype=np.int64) * 7 + 3,
        bucket=np.array(buckets, dtype=np.int64).reshape(n, 2),
        original_size=np.zeros((n, 2), dtype=np.int64),
        crop=np.zeros((n, 2), dtype=np.int64),
        paths=pl.Series("path", [f"img/{i}.png" for i in range(n)]),
        parts=pl.DataFrame(
            {p: [[]] * n for p in PARTS}, schema={p: pl.List(pl.String) for p in PARTS}
        ),
    )


def bucket_of(items: BucketItems) -> dict[int, tuple[int, int]]:
    return {int(i): (int(w), int(h)) for i, (w, h) in zip(items.ids, items.bucket, strict=True)}


# ---------------------------------------------------------------- batch order


def test_order_is_deterministic_and_pinned() -> None:
    """Two instances agree, and the order is pinned: PCG64's raw stream and a stable
    argsort do not change with the NumPy version or the machine."""
    a, b = BucketBatches(make_items(), 2, seed=5), BucketBatches(make_items(), 2, seed=5)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(1) == b.epoch_batches(1)
    first = a.epoch_batches(0)[:3]
    assert [(x.ids, x.bucket) for x in first] == PINNED


PINNED = [((157, 17), (16, 8)), ((164, 192), (16, 16)), ((66, 101), (8, 16))]


def test_every_batch_is_from_one_bucket() -> None:
    items = make_items()
    owner = bucket_of(items)
    for batch in BucketBatches(items, 3, seed=1).epoch_batches(0):
        assert {owner[i] for i in batch.ids} == {batch.bucket}


def test_each_id_at_most_once_per_epoch_and_remainders_counted() -> None:
    batches = BucketBatches(make_items(), 4, seed=2)
    # 11 -> 2 batches, 17 -> 4, 6 -> 1, 2 -> 0: 7 batches, 36 - 28 = 8 left out
    assert (batches.batches_per_epoch, batches.dropped_per_epoch) == (7, 8)
    for epoch in range(3):
        ids = [i for b in batches.epoch_batches(epoch) for i in b.ids]
        assert len(ids) == len(set(ids)) == 28
        assert all(len(b.ids) == 4 for b in batches.epoch_batches(epoch))


def test_epochs_differ_and_seeds_differ() -> None:
    batches = BucketBatches(make_items(), 2, seed=0)
    assert batches.epoch_batches(0) != batches.epoch_batches(1)
    ids = lambda b: [x.ids for x in b.epoch_batches(0)]  # noqa: E731
    assert ids(batches) != ids(BucketBatches(make_items(), 2, seed=1))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_and_make_the_global_batch(world_size: int) -> None:
    items = make_items()
    ranks = [BucketBatches(items, 2, world_size, r, seed=3) for r in range(world_size)]
    order = ranks[0].global_order(0)
    per_rank = [r.epoch_batches(0) for r in ranks]
    for k, same_step in enumerate(zip(*per_rank, strict=True)):
        assert len({b.bucket for b in same_step}) == 1
        joined = [i for b in same_step for i in b.ids]
        assert len(set(joined)) == len(joined)
        assert joined == order.ids[k].tolist()


def test_two_ranks_with_half_batch_equal_one_rank_with_full_batch() -> None:
    """The DDP equivalence: global batch B on 1 rank == B/2 on each of 2 ranks."""
    items = make_items()
    single = BucketBatches(items, 4, 1, 0, seed=9).epoch_batches(0)
    halves = [BucketBatches(items, 2, 2, r, seed=9).epoch_batches(0) for r in (0, 1)]
    for whole, first, second in zip(single, *halves, strict=True):
        assert whole.ids == first.ids + second.ids
        assert whole.bucket == first.bucket == second.bucket


def test_resume_from_any_position_equals_the_uninterrupted_tail() -> None:
    items = make_items()
    run = BucketBatches(items, 3, seed=4)
    k = run.batches_per_epoch
    full = list(itertools.islice(run.iterate(), 3 * k))
    assert [p for p, _ in full][: k + 1] == [DataPosition(0, i) for i in range(k)] + [
        DataPosition(1, 0)
    ]
    for step in range(2 * k + 1):
        resumed = BucketBatches(items, 3, seed=4)  # a fresh process: no cache shared
        tail = list(itertools.islice(resumed.iterate(full[step][0]), 3 * k - step))
        assert tail == full[step:]


def test_next_position_crosses_the_epoch_boundary() -> None:
    run = BucketBatches(make_items(), 3, seed=4)
    k = run.batches_per_epoch
    stream = list(itertools.islice(run.iterate(), 2 * k + 1))
    for (pos, _), (following, _) in itertools.pairwise(stream):
        assert run.next_position(pos) == following
    assert run.next_position(DataPosition(0, k - 1)) == DataPosition(1, 0)
    assert run.normalize(DataPosition(2, k)) == DataPosition(3, 0)  # a finished epoch
    assert list(run.iterate(DataPosition(0, k - 1), stop_epoch=1))[0][0] == DataPosition(0, k - 1)
    assert len(list(run.iterate(stop_epoch=2))) == 2 * k


def test_order_depends_on_items_not_on_rank_count() -> None:
    a = BucketBatches(make_items(), 4, 1, 0, seed=1)
    b = BucketBatches(make_items(), 2, 2, 1, seed=1)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != BucketBatches(make_items(), 4, seed=2).fingerprint()
    assert a.fingerprint() != BucketBatches(make_items({(8, 8): 40}), 4, seed=1).fingerprint()


@pytest.mark.parametrize(
    ("batch_size", "world_size", "rank", "seed", "message"),
    [
        (9, 2, 0, 0, "no batch possible: batch_size \\* world_size = 18 exceeds every bucket"),
        (2, 2, 2, 0, "rank 2 is out of range for world_size 2"),
        (2, 2, -1, 0, "rank -1 is out of range"),
        (0, 1, 0, 0, "must be >= 1"),
        (2, 0, 0, 0, "must be >= 1"),
        (2, 1, 0, -3, "seed must be >= 0"),
    ],
)
def test_bad_batch_layouts_are_refused(
    batch_size: int, world_size: int, rank: int, seed: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BucketBatches(make_items(), batch_size, world_size, rank, seed)


def test_bad_positions_are_refused() -> None:
    run = BucketBatches(make_items(), 4)
    with pytest.raises(ValueError, match="past the epoch's 7 batches"):
        next(run.iterate(DataPosition(0, 8)))
    with pytest.raises(ValueError, match="epoch >= 0"):
        DataPosition(-1, 0)


def test_items_refuse_unsorted_ids() -> None:
    items = make_items({(8, 8): 3})
    with pytest.raises(ValueError, match="unique and ascending"):
        BucketItems(items.ids[::-1].copy(), items.bucket, items.original_size, items.crop,
                    items.paths, items.parts)  # fmt: skip
    assert items.rows([17, 3]).tolist() == [2, 0]
    with pytest.raises(KeyError, match=r"\[5, 999\]"):
        items.rows([3, 5, 999])


# ---------------------------------------------------------------- captions

HEAD, BODY, TAIL = ["1girl", "hatsune miku"], [f"g{i}" for i in range(20)], ["mid", "safe"]


def test_head_and_tail_keep_their_place_and_are_never_dropped() -> None:
    cfg = CaptionConfig(tag_dropout=0.5)
    for post in range(200):
        tags = make_caption(HEAD, BODY, TAIL, cfg, caption_rng(0, 0, post)).split(", ")
        assert tags[:2] == HEAD and tags[-2:] == TAIL
        assert set(tags[2:-2]) <= set(BODY)


@pytest.mark.parametrize("rate", [0.1, 0.15, 0.5])
def test_tag_dropout_drops_the_right_fraction(rate: float) -> None:
    cfg = CaptionConfig(tag_dropout=rate)
    kept = [len(make_caption([], BODY, [], cfg, caption_rng(1, 0, p)).split(", ")) for p in
            range(500)]  # fmt: skip
    dropped = 1 - sum(kept) / (500 * len(BODY))
    assert abs(dropped - rate) < 0.02  # 10,000 tags: several standard deviations


def test_shuffle_changes_order_and_no_shuffle_keeps_it() -> None:
    shuffled = CaptionConfig(tag_dropout=0.0)
    orders = {make_caption([], BODY, [], shuffled, caption_rng(0, 0, p)) for p in range(20)}
    assert len(orders) == 20
    assert all(sorted(o.split(", ")) == sorted(BODY) for o in orders)
    plain = CaptionConfig(shuffle=False, tag_dropout=0.0)
    assert make_caption(HEAD, BODY, TAIL, plain, caption_rng(0, 0, 1)) == ", ".join(
        HEAD + BODY + TAIL
    )


def test_same_rng_same_caption_and_post_epoch_seed_change_it() -> None:
    cfg = CaptionConfig(tag_dropout=0.15)
    one = make_caption(HEAD, BODY, TAIL, cfg, caption_rng(3, 1, 42))
    assert one == make_caption(HEAD, BODY, TAIL, cfg, caption_rng(3, 1, 42))
    others = [caption_rng(4, 1, 42), caption_rng(3, 2, 42), caption_rng(3, 1, 43)]
    assert all(make_caption(HEAD, BODY, TAIL, cfg, rng) != one for rng in others)


def test_caption_dropout_rate() -> None:
    cfg = CaptionConfig(caption_dropout=0.3)
    blank = [make_caption(HEAD, BODY, TAIL, cfg, caption_rng(0, 0, p)) == "" for p in range(2000)]
    assert 0.26 < sum(blank) / 2000 < 0.34
    never = CaptionConfig()
    assert all(make_caption(HEAD, [], TAIL, never, caption_rng(0, 0, p)) for p in range(200))


def test_keep_separator_and_separator() -> None:
    cfg = CaptionConfig(shuffle=False, tag_dropout=0.0, separator=",")
    got = make_caption(["1girl"], ["smile"], ["safe"], cfg, caption_rng(0, 0, 0), "|||")
    assert got == "1girl,|||smile,safe"  # HakuBooru's "<keep>, |||<rest>"
    assert make_caption([], [], [], CaptionConfig(), caption_rng(0, 0, 0)) == ""


def test_caption_config_is_strict() -> None:
    with pytest.raises(pydantic.ValidationError):
        CaptionConfig(tag_dropout=1.0)
    with pytest.raises(pydantic.ValidationError):
        CaptionConfig(caption_dropout=-0.1)
    with pytest.raises(pydantic.ValidationError):
        CaptionConfig(dropout=0.1)
    assert all(f.description for f in CaptionConfig.model_fields.values())


# ---------------------------------------------------------------- items and tensors

ROWS = [  # id, bucket (w, h), original (w, h), crop (left, top), pixel value
    (10, (16, 8), (64, 30), (1, 0), 0),
    (11, (16, 8), (70, 35), (0, 0), 255),
    (12, (8, 16), (20, 50), (0, 2), 128),
    (13, (16, 8), (32, 16), (0, 0), 64),
]
STRINGS = pl.List(pl.String)


def write_run(run: Path, rows: list = ROWS, modes: tuple[str, ...] = ("RGB",) * 4) -> None:
    """A run dir with images, `buckets/manifest.parquet` (rows shuffled) and
    `tag/captions.parquet` as the earlier stages write them."""
    for (pid, bucket, _, _, value), mode in zip(rows, modes, strict=True):
        path = run / "download/images" / f"{pid}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, bucket, value if mode == "L" else (value, value, 255 - value)).save(path)
    manifest = pl.DataFrame(
        [(pid, f"download/images/{pid}.png", *o, *b, *b, *c) for pid, b, o, c, _ in rows[::-1]],
        schema=["id", "path", "orig_w", "orig_h", "bucket_w", "bucket_h", "resized_w",
                "resized_h", "crop_left", "crop_top"], orient="row",
    )  # fmt: skip
    (run / "buckets").mkdir(parents=True, exist_ok=True)
    manifest.write_parquet(run / "buckets/manifest.parquet")
    (run / "tag").mkdir(parents=True, exist_ok=True)
    captions_frame([r[0] for r in rows]).write_parquet(run / "tag/captions.parquet")


def captions_frame(ids: list[int]) -> pl.DataFrame:
    n = len(ids)
    lists = {g: [[f"{g}{i}"] for i in ids] for g in ("count", "character", "copyright")}
    return pl.DataFrame(
        {"id": ids, "caption": ["?"] * n, **lists, "artist": [[]] * n,
         "general": [[f"a{i}", f"b{i}", f"c{i}"] for i in ids], "meta": [["highres"]] * n,
         "quality": ["masterpiece"] * n, "rating_tags": [["safe"]] * n, "date": [None] * n},
        schema_overrides={"artist": STRINGS, "date": pl.String},
    )  # fmt: skip


@pytest.mark.parametrize("layout", ["epsilon", "delta", "hakubooru"])
def test_load_items_reads_manifest_and_caption_parts(tmp_path: Path, layout: str) -> None:
    write_run(tmp_path)
    items = load_items(tmp_path / "buckets/manifest.parquet", tmp_path / "tag/captions.parquet",
                       layout)  # fmt: skip
    assert items.ids.tolist() == [10, 11, 12, 13]
    assert items.bucket.tolist() == [[16, 8], [16, 8], [8, 16], [16, 8]]
    assert items.original_size[0].tolist() == [64, 30] and items.crop[2].tolist() == [0, 2]
    assert items.paths[2] == "download/images/12.png"
    expected = lay_out(captions_frame([10, 11, 12, 13]).lazy(), layout).collect()
    assert items.parts.rows() == expected.select(PARTS).rows()
    assert items.keep_separator == ("|||" if layout == "hakubooru" else None)


def test_load_items_without_captions(tmp_path: Path) -> None:
    write_run(tmp_path)
    items = load_items(tmp_path / "buckets/manifest.parquet", None)
    assert items.parts.rows() == [([], [], [])] * 4
    batch = Batch(ids=(10, 11), bucket=(16, 8), epoch=0, index=0)
    assert load_batch(batch, items, tmp_path, CaptionConfig(), seed=0).captions == ["", ""]


def test_load_items_refuses_bad_inputs(tmp_path: Path) -> None:
    write_run(tmp_path)
    manifest, captions = tmp_path / "buckets/manifest.parquet", tmp_path / "tag/captions.parquet"
    with pytest.raises(InputError, match="does not exist: run `kohaku buckets` first"):
        load_items(tmp_path / "nope.parquet", None)
    captions_frame([10, 12]).write_parquet(captions)
    with pytest.raises(InputError, match=r"2 of 4 images .* no caption .*\[11, 13\]"):
        load_items(manifest, captions)
    captions_frame([10, 11, 12, 13]).drop("general").write_parquet(captions)
    with pytest.raises(InputError, match=r"lacks columns \['general'\]"):
        load_items(manifest, captions)
    pl.read_parquet(manifest).drop("crop_top").write_parquet(manifest)
    with pytest.raises(InputError, match=r"lacks columns \['crop_top'\]"):
        load_items(manifest, None)


def test_load_batch_gives_sdxl_tensors(tmp_path: Path) -> None:
    write_run(tmp_path, modes=("RGB", "RGB", "RGB", "L"))
    items = load_items(tmp_path / "buckets/manifest.parquet", tmp_path / "tag/captions.parquet")
    batch = Batch(ids=(13, 10, 11), bucket=(16, 8), epoch=2, index=0)
    got = load_batch(batch, items, tmp_path, CaptionConfig(tag_dropout=0.0), seed=1)
    assert (got.ids, got.position) == ((13, 10, 11), DataPosition(2, 0))
    assert got.pixels.shape == (3, 8, 16, 3) and got.pixels.dtype == torch.uint8  # as decoded
    pixels = unit_pixels(got.pixels, torch.device("cpu"))  # on the training device
    assert pixels.shape == (3, 3, 8, 16) and pixels.dtype == torch.float32
    assert pixels.is_contiguous() and got.posterior is None
    assert torch.allclose(pixels[0], torch.tensor(64 / 127.5 - 1))  # grayscale -> RGB
    assert pixels[1, :2].eq(-1).all() and pixels[1, 2].eq(1).all()
    assert pixels[2, :2].eq(1).all() and pixels[2, 2].eq(-1).all()
    assert got.original_size.tolist() == [[16, 32], [30, 64], [35, 70]]  # (h, w)
    assert got.crop_top_left.tolist() == [[0, 0], [0, 1], [0, 0]]  # (top, left)
    assert got.target_size.tolist() == [[8, 16]] * 3
    assert got.time_ids().tolist()[1] == [30, 64, 0, 1, 8, 16]
    assert got.original_size.dtype == got.target_size.dtype == torch.int64
    assert got.captions[1].startswith("count10, character10, copyright10, ")
    assert got.captions[1].endswith(", masterpiece, highres, safe")  # quality, meta, rating
    assert sorted(got.captions[1].split(", ")[3:6]) == ["a10", "b10", "c10"]


def test_load_batch_captions_follow_seed_epoch_and_post(tmp_path: Path) -> None:
    write_run(tmp_path)
    items = load_items(tmp_path / "buckets/manifest.parquet", tmp_path / "tag/captions.parquet")
    cfg = CaptionConfig(tag_dropout=0.3)
    batch = Batch(ids=(10, 11, 13), bucket=(16, 8), epoch=0, index=5)
    first = load_batch(batch, items, tmp_path, cfg, seed=7)
    assert load_batch(batch, items, tmp_path, cfg, seed=7).captions == first.captions
    rng = caption_rng(7, 0, 11)
    assert first.captions[1] == make_caption(*items.parts.row(1), cfg, rng)


def test_load_batch_refuses_an_image_of_the_wrong_size(tmp_path: Path) -> None:
    write_run(tmp_path)
    Image.new("RGB", (15, 8)).save(tmp_path / "download/images/11.png")
    items = load_items(tmp_path / "buckets/manifest.parquet", None)
    batch = Batch(ids=(10, 11), bucket=(16, 8), epoch=0, index=0)
    with pytest.raises(InputError, match="11.png is 15x8, its bucket 16x8"):
        load_batch(batch, items, tmp_path, CaptionConfig(), seed=0)
    (tmp_path / "download/images/11.png").unlink()
    with pytest.raises(InputError, match="11.png is missing"):
        load_batch(batch, items, tmp_path, CaptionConfig(), seed=0)
