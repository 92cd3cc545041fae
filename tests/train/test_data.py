"""The train stage's data side: batch order and resume, captions, items and batch tensors."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pydantic
import pytest
import torch
from PIL import Image

from kohaku.errors import ConfigError, InputError
from kohaku.sdxl.tiny import tiny_tokenizers
from kohaku.tag.captions import lay_out
from kohaku.train.data import (
    PARTS,
    Batch,
    BucketBatches,
    BucketItems,
    CaptionConfig,
    DataPosition,
    caption_rng,
    check_texts,
    draw_caption,
    example_captions,
    load_batch,
    load_items,
    make_caption,
    with_budget,
)
from kohaku.train.loader import unit_pixels
from kohaku.train.tokens import TagBudget

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


def test_separator_and_no_keep_separator_in_the_text() -> None:
    """hakubooru's `|||` only marks where the kept head ends; it is no token, kohya strips
    it, and the text encoders never see it (issue 12; it used to be "1girl,|||smile,safe")."""
    cfg = CaptionConfig(shuffle=False, tag_dropout=0.0, separator=",")
    assert make_caption(["1girl"], ["smile"], ["safe"], cfg, caption_rng(0, 0, 0)) == (
        "1girl,smile,safe"
    )
    assert make_caption([], ["smile"], ["safe"], cfg, caption_rng(0, 0, 0)) == "smile,safe"
    assert make_caption([], [], [], CaptionConfig(), caption_rng(0, 0, 0)) == ""


def test_the_token_budget_cuts_body_tags_from_the_end_at_tag_boundaries() -> None:
    """A caption over max_tokens keeps its head and tail, loses body tags from the end of
    the shuffled body (never part of a tag), and fits; the draws are unchanged."""
    cfg = CaptionConfig(tag_dropout=0.1, max_tokens=75)
    head, tail = ["1girl", "miku", "vocaloid"], ["best", "new", "safe"]
    body = [f"t{i}" for i in range(40)]  # 3-4 tiny-BPE tokens each: far over 75
    budget = TagBudget.of(tiny_tokenizers()[0], cfg)
    for post in range(20):
        whole = make_caption(head, body, tail, cfg, caption_rng(0, 0, post)).split(", ")
        got = draw_caption(head, body, tail, cfg, caption_rng(0, 0, post), budget)
        tags = got.text.split(", ")
        assert got.cut and tags[:3] == head and tags[-3:] == tail
        assert tags[3:-3] == whole[3:-3][: len(tags) - 6]  # a prefix of the uncut body
        count = budget.lengths.count_texts([got.text])[0]
        assert count <= 75  # and one more body tag would not have fit:
        assert budget.lengths.count_texts([", ".join(tags + [whole[len(tags) - 3]])])[0] > 75
    short = draw_caption(head, body[:3], tail, cfg, caption_rng(0, 0, 1), budget)
    assert not short.cut and short.text == make_caption(head, body[:3], tail, cfg,
                                                        caption_rng(0, 0, 1))  # fmt: skip


def test_head_and_tail_alone_over_the_budget_are_kept_and_counted() -> None:
    budget = TagBudget.of(tiny_tokenizers()[0], CaptionConfig(max_tokens=75))
    long_head = [f"character {i}" for i in range(30)]
    got = draw_caption(long_head, ["smile"], ["safe"], CaptionConfig(), caption_rng(0, 0, 0),
                       budget)  # fmt: skip
    assert got.cut and got.text == ", ".join([*long_head, "safe"])


def test_the_cut_with_a_separator_without_a_space_checks_real_counts() -> None:
    """Tags that end and start in punctuation merge across "," into one BPE run: the sums are
    estimates there, and the cut still fits."""
    cfg = CaptionConfig(shuffle=False, tag_dropout=0.0, separator=",", max_tokens=75)
    budget = TagBudget.of(tiny_tokenizers()[0], cfg)
    body = [f"^_^{i}:)" for i in range(60)]
    got = draw_caption(["1girl"], body, ["safe"], cfg, caption_rng(0, 0, 0), budget)
    tags = got.text.split(",")
    assert (
        got.cut
        and tags[0] == "1girl"
        and tags[-1] == "safe"
        and tags[1:-1] == body[: len(tags) - 2]
    )
    assert budget.lengths.count_texts([got.text])[0] <= 75


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


def test_load_batch_hakubooru_captions_and_cut_count(tmp_path: Path) -> None:
    """The keep separator stays out of the captions; the budget's cuts are counted."""
    write_run(tmp_path)
    items = load_items(tmp_path / "buckets/manifest.parquet", tmp_path / "tag/captions.parquet",
                       "hakubooru")  # fmt: skip
    batch = Batch(ids=(10, 11, 13), bucket=(16, 8), epoch=0, index=0)
    got = load_batch(batch, items, tmp_path, CaptionConfig(), seed=0)
    assert got.captions_cut == 0 and all("|||" not in c for c in got.captions)
    assert got.captions[0].startswith("count10, character10, copyright10, ")
    long = items.parts.with_columns(  # post 11 gets 40 more body tags: over 75 tokens
        body=pl.when(pl.int_range(pl.len()) == 1)
        .then(pl.col("body").list.concat(pl.lit([f"tag number {i}" for i in range(40)])))
        .otherwise(pl.col("body"))
    )  # fmt: skip
    cfg = CaptionConfig(max_tokens=75)
    tight = with_budget(replace(items, parts=long), tiny_tokenizers()[0], cfg)
    cut = load_batch(batch, tight, tmp_path, cfg, seed=0)
    assert cut.captions_cut == 1 and cut.captions[::2] == got.captions[::2]
    assert cut.captions[1].endswith(", safe, masterpiece")  # hakubooru tail: rating, quality


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


# ---------------------------------------------------------------- natural-language captions

TEXT = "A girl with green twintails sings on a stage. The crowd waves light sticks."
MIX = CaptionConfig(tag_dropout=0.15, p_tags=0.5, p_text=0.3, p_both=0.2)
PINNED_KINDS = [2000, 1194, 806]  # seed 9, epoch 0, posts 0-3999


def test_the_kind_is_drawn_per_step_in_the_configured_proportions() -> None:
    """Over 4,000 posts with a fixed seed: each kind within 4 standard deviations of its
    chance (pinned: the same seed gives the same counts), and the same draws again give the
    same kinds (deterministic)."""
    kinds = [draw_caption(HEAD, BODY, TAIL, MIX, caption_rng(9, 0, p), text=TEXT).kind
             for p in range(4000)]  # fmt: skip
    for kind, p in (("tags", 0.5), ("text", 0.3), ("both", 0.2)):
        sd = (4000 * p * (1 - p)) ** 0.5
        assert abs(kinds.count(kind) - 4000 * p) < 4 * sd, (kind, kinds.count(kind))
    assert [kinds.count(k) for k in ("tags", "text", "both")] == PINNED_KINDS
    again = [draw_caption(HEAD, BODY, TAIL, MIX, caption_rng(9, 0, p), text=TEXT).kind
             for p in range(1000)]  # fmt: skip
    assert again == kinds[:1000]
    epoch1 = [draw_caption(HEAD, BODY, TAIL, MIX, caption_rng(9, 1, p), text=TEXT).kind
              for p in range(200)]  # fmt: skip
    assert epoch1 != kinds[:200]  # another epoch, another choice


def test_each_kind_places_the_text_and_keeps_the_tag_draws() -> None:
    """text: head, text, tail (no body tags); both: head, the body tags of the tags-only
    caption of the same draws, then the text (or the text first), tail."""
    seen = set()
    for post in range(60):
        tags_only = make_caption(HEAD, BODY, TAIL, MIX, caption_rng(0, 0, post)).split(", ")
        got = draw_caption(HEAD, BODY, TAIL, MIX, caption_rng(0, 0, post), text=TEXT)
        body = tags_only[2:-2]
        want = {"tags": [*HEAD, *body, *TAIL], "text": [*HEAD, TEXT, *TAIL],
                "both": [*HEAD, *body, TEXT, *TAIL]}[got.kind]  # fmt: skip
        assert got.text == ", ".join(want) and not got.fallback
        first = MIX.model_copy(update={"text_position": "before_tags"})
        before = draw_caption(HEAD, BODY, TAIL, first, caption_rng(0, 0, post), text=TEXT)
        if got.kind == "both":
            assert before.text == ", ".join([*HEAD, TEXT, *body, *TAIL])
        seen.add(got.kind)
    assert seen == {"tags", "text", "both"}


def test_no_text_configured_leaves_every_caption_as_before() -> None:
    """p_tags = 1 (the default): the text is never used and the captions are those drawn
    without one (existing tests pin them)."""
    cfg = CaptionConfig(tag_dropout=0.15)
    for post in range(200):
        plain = make_caption(HEAD, BODY, TAIL, cfg, caption_rng(2, 0, post))
        got = draw_caption(HEAD, BODY, TAIL, cfg, caption_rng(2, 0, post), text=TEXT)
        assert (got.text, got.kind, got.fallback) == (plain, "tags", False)


@pytest.mark.parametrize("missing", [None, ""])
def test_a_post_without_text_falls_back_to_its_tags(missing: str | None) -> None:
    cfg = CaptionConfig(p_tags=0.0, p_text=1.0)
    for post in range(50):
        got = draw_caption(HEAD, BODY, TAIL, cfg, caption_rng(0, 0, post), text=missing)
        tags = make_caption(HEAD, BODY, TAIL, CaptionConfig(), caption_rng(0, 0, post))
        assert (got.text, got.kind, got.fallback) == (tags, "tags", True)
    blank = CaptionConfig(p_tags=0.0, p_text=1.0, caption_dropout=0.99)
    got = draw_caption(HEAD, BODY, TAIL, blank, caption_rng(0, 0, 0), text=None)
    assert (got.text, got.kind, got.fallback) == ("", "", False)  # dropped whole: no kind


def test_caption_probabilities_are_checked() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"p_tags 0.5 \+ p_text 0.3 \+ p_both 0 "
                       r"= 0.8, not 1"):  # fmt: skip
        CaptionConfig(p_tags=0.5, p_text=0.3)
    with pytest.raises(pydantic.ValidationError, match="p_text"):
        CaptionConfig(p_tags=1.5, p_text=-0.5)
    only = CaptionConfig(p_tags=0.0, p_both=1.0)
    assert {only.kind(u) for u in (0.0, 0.5, 0.999999)} == {"both"}
    split = CaptionConfig(p_tags=0.3, p_text=0.7)
    assert [split.kind(u) for u in (0.0, 0.2999, 0.3, 0.9999999)] == ["tags", "tags", "text",
                                                                      "text"]  # fmt: skip
    assert not CaptionConfig().uses_text and split.uses_text


def test_the_budget_drops_body_tags_before_it_shortens_the_text() -> None:
    """both at max_tokens 75: every body tag goes before the text loses a word; with the
    body gone, whole sentences go from the text's end, then words of its first sentence;
    head and tail alone over the budget keep them and cut the text to nothing."""
    cfg = CaptionConfig(shuffle=False, tag_dropout=0.0, p_tags=0.0, p_both=1.0, max_tokens=75)
    budget = TagBudget.of(tiny_tokenizers()[0], cfg)
    count = lambda text: budget.lengths.count_texts([text])[0]  # noqa: E731
    head, tail, body = ["1girl"], ["safe"], [f"t{i}" for i in range(40)]
    short = "A girl sings."
    got = draw_caption(head, body, tail, cfg, caption_rng(0, 0, 0), budget, short)
    assert got.cut and got.text.endswith(f", {short}, safe") and count(got.text) <= 75
    kept = got.text.split(", ")[1:-2]
    assert kept == body[: len(kept)] and 0 < len(kept) < len(body)

    sentences = [f"Sentence {k} says {' '.join(['a'] * 12)}." for k in range(6)]
    long = " ".join(sentences)  # ~100 tokens: no body tag can stay
    got = draw_caption(head, body, tail, cfg, caption_rng(0, 0, 0), budget, long)
    text = got.text.removeprefix("1girl, ").removesuffix(", safe")
    k = text.count(".")
    assert got.cut and text == " ".join(sentences[:k]) and 0 < k < 6 and count(got.text) <= 75
    assert count(", ".join(["1girl", " ".join(sentences[: k + 1]), "safe"])) > 75

    one = "A " + " ".join(["very"] * 120) + " long sentence."
    got = draw_caption(head, body, tail, cfg, caption_rng(0, 0, 0), budget, one)
    text = got.text.removeprefix("1girl, ").removesuffix(", safe")
    assert got.cut and one.startswith(text + " ") and count(got.text) <= 75
    assert count(got.text.replace(text, one[: len(text) + 5])) > 75  # one more word would not fit

    huge = [f"character {i}" for i in range(40)]
    got = draw_caption(huge, body, tail, cfg, caption_rng(0, 0, 0), budget, short)
    assert got.cut and got.text == ", ".join([*huge, "safe"])


def test_a_text_that_fits_is_never_cut() -> None:
    cfg = CaptionConfig(p_tags=0.0, p_text=1.0, max_tokens=300)
    budget = TagBudget.of(tiny_tokenizers()[0], cfg)
    text = " ".join(["a"] * 250) + "."
    got = draw_caption(HEAD, BODY, TAIL, cfg, caption_rng(0, 0, 0), budget, text)
    assert not got.cut and got.text == ", ".join([*HEAD, text, *TAIL])


def test_load_items_reads_texts_and_batches_count_the_kinds(tmp_path: Path) -> None:
    write_run(tmp_path)
    captions = tmp_path / "tag/captions.parquet"
    frame = pl.read_parquet(captions)
    texts = [f"Picture {i}." if i % 2 else None for i in frame["id"]]
    frame.with_columns(text=pl.Series(texts, dtype=pl.String)).write_parquet(captions)
    items = load_items(tmp_path / "buckets/manifest.parquet", captions)
    assert items.parts.columns == PARTS
    assert items.texts.to_list() == [None, "Picture 11.", None, "Picture 13."]
    cfg = CaptionConfig(p_tags=0.0, p_text=1.0)
    check_texts(items, cfg, captions)  # some have texts
    got = load_batch(Batch((10, 11, 13), (16, 8), 0, 0), items, tmp_path, cfg, seed=0)
    assert got.captions[1] == "count11, character11, copyright11, Picture 11., masterpiece, " \
        "highres, safe"  # fmt: skip
    assert (got.captions_text, got.captions_both, got.captions_fallback) == (2, 0, 1)


def test_texts_drawn_without_any_text_are_one_error(tmp_path: Path) -> None:
    write_run(tmp_path)
    captions = tmp_path / "tag/captions.parquet"
    items = load_items(tmp_path / "buckets/manifest.parquet", captions)  # no text column
    assert items.texts is None
    check_texts(items, CaptionConfig(), captions)  # tags only: fine
    with pytest.raises(ConfigError, match=r"none of the 4 images has a text in .*captions"
                       r".parquet: set tag.text_captions"):  # fmt: skip
        check_texts(items, CaptionConfig(p_tags=0.5, p_both=0.5), captions)
    pl.read_parquet(captions).with_columns(text=pl.lit(None, pl.String)).write_parquet(captions)
    items = load_items(tmp_path / "buckets/manifest.parquet", captions)
    with pytest.raises(ConfigError, match="none of the 4 images has a text"):
        check_texts(items, CaptionConfig(p_tags=0.5, p_text=0.5), captions)


def test_example_captions_show_texts_and_a_fallback(tmp_path: Path) -> None:
    write_run(tmp_path)
    captions = tmp_path / "tag/captions.parquet"
    cfg = CaptionConfig(p_tags=0.0, p_both=1.0)
    plain = example_captions(captions, "epsilon", cfg, n=2)  # no text column: first posts
    assert [(i, c.kind, c.fallback) for i, c in plain] == [(10, "tags", True), (11, "tags", True)]
    frame = pl.read_parquet(captions)
    texts = pl.Series([None, "Post eleven.", None, "Post thirteen."], dtype=pl.String)
    frame.with_columns(text=texts).write_parquet(captions)
    got = example_captions(captions, "epsilon", cfg, n=2)
    assert [(i, c.kind, c.fallback) for i, c in got] == [(10, "tags", True), (11, "both", False),
                                                         (13, "both", False)]  # fmt: skip
    assert got[1][1].text.endswith(", Post eleven., masterpiece, highres, safe")
