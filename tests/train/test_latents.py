"""The latent cache on a tiny seeded VAE and real files: it holds the VAE posterior (fp16),
gives the trainer's latents, is reused without encoding, encodes only new or changed posts,
keeps another VAE apart, survives a killed run, and refuses missing posts."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors import safe_open

from kohaku.errors import InputError
from kohaku.sdxl.tiny import tiny_vae
from kohaku.train import objective
from kohaku.train.data import Batch, BucketItems, CaptionConfig, load_batch, load_items
from kohaku.train.latents import (
    LatentCache,
    cache_latents,
    latents_from_cache,
    vae_key,
)
from kohaku.train.loader import unit_pixels
from tests.train.rundir import write_training_run

FP16 = {"rtol": 2e-3, "atol": 1e-4}  # fp16 keeps 11 significant bits


def seeded_vae(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tiny_vae().eval()


def count_encodes(vae, fail_at: int | None = None) -> list[int]:
    """Batch sizes of the VAE's encode calls from now on; the call number `fail_at` raises
    (a run killed mid-way)."""
    calls: list[int] = []
    original = functools.partial(type(vae).encode, vae)

    def encode(pixels, *args, **kw):
        if len(calls) == fail_at:
            raise RuntimeError("killed")
        calls.append(pixels.shape[0])
        return original(pixels, *args, **kw)

    vae.encode = encode
    return calls


def first(items: BucketItems, k: int) -> BucketItems:
    return BucketItems(ids=items.ids[:k], bucket=items.bucket[:k],
                       original_size=items.original_size[:k], crop=items.crop[:k],
                       paths=items.paths[:k], parts=items.parts[:k])  # fmt: skip


def pixels_of(items: BucketItems, run: Path, ids: tuple[int, ...]) -> torch.Tensor:
    bucket = tuple(int(v) for v in items.bucket[items.rows(ids)[0]])
    pixels = load_batch(Batch(ids, bucket, 0, 0), items, run, CaptionConfig(), 0).pixels
    return unit_pixels(pixels, torch.device("cpu"))


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """Six posts: 100, 102, 104 in bucket 64x64, 101, 103, 105 in 64x32."""
    return write_training_run(tmp_path / "run", n=6)


@pytest.fixture
def items(run: Path) -> BucketItems:
    return load_items(run / "buckets" / "manifest.parquet", None)


def test_cache_holds_the_posterior_and_gives_the_trainers_latents(run, items, tmp_path):
    vae = seeded_vae(0)
    index = cache_latents(items, run, vae, tmp_path / "cache", shard_size=4, batch_size=2)
    folder = tmp_path / "cache" / vae_key(vae)[:16]
    assert (index.folder, index.encoded, index.reused) == (folder, 6, 0)
    shards = ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == ["cache.json", "index.parquet", *shards]
    meta = json.loads((folder / "cache.json").read_text())
    assert (meta["key"], meta["posts"], meta["shards"]) == (vae_key(vae), 6, 2)
    listed = pl.read_parquet(folder / "index.parquet")
    assert listed["id"].to_list() == list(range(100, 106))
    assert {"bucket_w", "bucket_h", "shard"} <= set(listed.columns)
    with safe_open(str(folder / "shard-00000.safetensors"), framework="pt") as f:
        tensor = f.get_tensor(f"{listed['id'][0]}.mean")
    assert tensor.dtype == torch.float16 and tensor.ndim == 3

    cache = LatentCache(folder)
    for ids in [(100, 102, 104), (101, 105)]:
        pixels = pixels_of(items, run, ids)
        with torch.no_grad():
            fresh = vae.encode(pixels).latent_dist
        post = cache.get(ids)
        assert post.mean.dtype == torch.float32 and post.mean.shape == fresh.mean.shape
        torch.testing.assert_close(post.mean, fresh.mean, **FP16)
        torch.testing.assert_close(post.std, fresh.std, **FP16)
        eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(7))
        cached = latents_from_cache(post.mean, post.std, eps, vae.config.scaling_factor)
        torch.testing.assert_close(cached, objective.to_latents(vae, pixels, eps), **FP16)


def test_second_call_encodes_nothing(run, items, tmp_path):
    vae = seeded_vae(0)
    index = cache_latents(items, run, vae, tmp_path / "cache", shard_size=4)
    before = mtimes(index.folder)
    calls = count_encodes(vae)
    again = cache_latents(items, run, vae, tmp_path / "cache", shard_size=4)
    assert calls == [] and (again.encoded, again.reused) == (0, 6)
    assert mtimes(index.folder) == before
    assert again.entries.equals(index.entries)


def test_new_posts_are_encoded_alone_into_a_new_shard(run, items, tmp_path):
    vae = seeded_vae(0)
    index = cache_latents(first(items, 4), run, vae, tmp_path / "cache")
    before = mtimes(index.folder)
    calls = count_encodes(vae)
    grown = cache_latents(items, run, vae, tmp_path / "cache")
    assert sum(calls) == 2 and (grown.encoded, grown.reused) == (2, 4)
    after = mtimes(grown.folder)
    assert sorted(after) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert after["shard-00000.safetensors"] == before["shard-00000.safetensors"]
    assert dict(zip(*grown.entries.select("id", "shard"), strict=True)) == {
        100: 0, 101: 0, 102: 0, 103: 0, 104: 1, 105: 1}  # fmt: skip
    cache = LatentCache(grown)
    assert cache.get([100, 102, 104]).mean.shape == (3, 4, 8, 8)
    assert cache.get([101, 103, 105]).mean.shape == (3, 4, 4, 8)


def test_a_changed_image_is_encoded_again(run, items, tmp_path):
    vae = seeded_vae(0)
    old = LatentCache(cache_latents(items, run, vae, tmp_path / "cache")).get([100])
    other = run / items.paths[int(items.rows([102])[0])]
    changed = run / items.paths[int(items.rows([100])[0])]
    changed.write_bytes(other.read_bytes())
    os.utime(changed, ns=(1, 1))
    calls = count_encodes(vae)
    index = cache_latents(items, run, vae, tmp_path / "cache")
    assert calls == [1] and (index.encoded, index.reused) == (1, 5)
    new = LatentCache(index).get([100])
    torch.testing.assert_close(new.mean, LatentCache(index).get([102]).mean, **FP16)
    assert not torch.allclose(new.mean, old.mean)


def test_another_vae_gets_its_own_folder(run, items, tmp_path):
    one = cache_latents(items, run, seeded_vae(0), tmp_path / "cache")
    two = cache_latents(items, run, seeded_vae(1), tmp_path / "cache")
    assert one.folder != two.folder and two.folder.parent == one.folder.parent
    assert two.encoded == 6 and (one.folder / "index.parquet").is_file()
    assert not torch.allclose(LatentCache(one).get([100]).mean, LatentCache(two).get([100]).mean)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_killed_run_leaves_whole_shards_and_leftovers_are_ignored(run, items, tmp_path):
    vae = seeded_vae(0)
    count_encodes(vae, fail_at=2)  # buckets in order: [101, 103], [105] | killed at [100, 102]
    with pytest.raises(RuntimeError, match="killed"):
        cache_latents(items, run, vae, tmp_path / "cache", shard_size=2, batch_size=2)
    folder = tmp_path / "cache" / vae_key(vae)[:16]
    assert LatentCache(folder).ids.tolist() == [101, 103]  # 105 was in no finished shard
    pid = dead_pid()
    stale = [folder / f".shard-00001.safetensors.tmp-{pid}", folder / f".index.parquet.tmp-{pid}"]
    for path in stale:
        path.write_bytes(b"half written")
    (folder / "shard-00001.safetensors").write_bytes(b"not in the index")

    calls = count_encodes(vae)
    index = cache_latents(items, run, vae, tmp_path / "cache", shard_size=2, batch_size=2)
    assert sum(calls) == 4 and (index.encoded, index.reused) == (4, 2)
    assert not any(p.exists() for p in stale)
    assert LatentCache(folder).get([101, 103, 105]).mean.shape == (3, 4, 4, 8)


def test_missing_posts_and_folders_are_input_errors(run, items, tmp_path):
    index = cache_latents(first(items, 2), run, seeded_vae(0), tmp_path / "cache")
    cache = LatentCache(index)
    with pytest.raises(InputError, match=r"not in the latent cache .*\[999\]"):
        cache.get([100, 999])
    with pytest.raises(ValueError, match="several buckets"):
        cache.get([100, 101])
    with pytest.raises(InputError, match="not a latent cache"):
        LatentCache(tmp_path / "cache")
    (index.folder / "shard-00000.safetensors").unlink()
    with pytest.raises(InputError, match="is gone"):
        LatentCache(index.folder).get([100])


def test_non_finite_latents_are_refused_and_nothing_is_listed(run, items, tmp_path):
    vae = seeded_vae(0)
    with torch.no_grad():
        vae.encoder.conv_in.weight.fill_(float("inf"))
    with pytest.raises(InputError, match="non-finite"):
        cache_latents(items, run, vae, tmp_path / "cache")
    assert not (tmp_path / "cache" / vae_key(vae)[:16] / "index.parquet").exists()
