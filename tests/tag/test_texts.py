"""Natural-language captions joined by post id in the tag stage (issue 14, item 2): inline
sample stages, the synthetic DB in batches, reuse, and every bad file named in the issue."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import polars as pl
import pytest

from kohaku.errors import InputError
from kohaku.sample import SampleConfig, run_sample
from kohaku.stage import read_manifest
from kohaku.tag import TagConfig, run_tag
from kohaku.tag.texts import open_text_source
from tests.tag.stage_files import write_sample_stage

POSTS = [
    {"id": i, "created_at": "2019-03-01T00:00:00+00:00", "rating": 0, "fav_count": i}
    for i in (1, 2, 3, 4)
]
TEXTS = {
    1: "A girl with long hair.",
    2: "   ",  # blank: no text
    3: "Two  cats\nsleep\u00a0(sketch).\t ",
    99: "A post that was not sampled.",
}


def write_texts(path: Path, rows: dict[int, str | None]) -> Path:
    frame = pl.DataFrame({"id": list(rows), "text": list(rows.values())},
                         schema={"id": pl.Int64, "text": pl.String})  # fmt: skip
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_ndjson(path)
    return path


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    write_sample_stage(tmp_path, POSTS, [(1, "solo", 0)], [(1, 1), (2, 1), (3, 1), (4, 1)],
                       fav_hist=[(0, 2019, 1, 4)])  # fmt: skip
    return tmp_path


def captions(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "tag" / "captions.parquet")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_texts_join_by_post_id(small_run: Path, tmp_path: Path, suffix: str) -> None:
    path = write_texts(tmp_path / f"texts{suffix}", TEXTS)
    manifest = run_tag(TagConfig(text_captions=path), small_run)
    got = captions(small_run)
    assert got["id"].to_list() == [1, 2, 3, 4]
    assert got["text"].to_list() == ["A girl with long hair.", None,
                                     "Two cats sleep (sketch).", None]  # fmt: skip
    assert not any("girl" in c or "cats" in c for c in got["caption"])  # tags only
    assert manifest.counts["texts"] == {"file": str(path), "file_rows": 4, "with_text": 2,
                                        "without_text": 2}  # fmt: skip
    assert manifest.inputs["text_captions"]["size"] == path.stat().st_size


def test_without_a_text_file_the_column_is_null(small_run: Path) -> None:
    manifest = run_tag(TagConfig(), small_run)
    assert captions(small_run)["text"].to_list() == [None] * 4
    assert "texts" not in manifest.counts and "text_captions" not in manifest.inputs


def test_brackets_are_escaped_as_in_tags(small_run: Path, tmp_path: Path) -> None:
    path = write_texts(tmp_path / "t.parquet", {3: "A cat (sleeping)."})
    run_tag(TagConfig(text_captions=path, escape_brackets=True), small_run)
    assert captions(small_run)["text"].to_list() == [None, None, r"A cat \(sleeping\).", None]


def test_a_changed_text_file_rebuilds(small_run: Path, tmp_path: Path) -> None:
    path = write_texts(tmp_path / "t.parquet", {1: "first"})
    first = run_tag(TagConfig(text_captions=path), small_run)
    assert run_tag(TagConfig(text_captions=path), small_run) == first  # reused
    time.sleep(0.01)
    write_texts(path, {1: "second", 2: "more"})
    again = run_tag(TagConfig(text_captions=path), small_run)
    assert again.created_at > first.created_at
    assert captions(small_run)["text"].to_list() == ["second", "more", None, None]


BAD = {
    "no_id": ({"post_id": [1], "text": ["a"]}, "has no `id` column .*it has post_id, text"),
    "no_text": ({"id": [1], "caption": ["a"]}, "has no `text` column"),
    "id_strings": ({"id": ["1"], "text": ["a"]}, "column `id` holds String, not integers"),
    "text_numbers": ({"id": [1], "text": [3]}, "column `text` holds Int64, not strings"),
    "duplicates": ({"id": [4, 1, 4, 2, 1], "text": list("abcde")},
                   r"2 duplicate ids \(first: \[1, 4\]\); keep one text per post id"),
    "null_id": ({"id": [1, None], "text": ["a", "b"]}, "1 rows have no id"),
}  # fmt: skip


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_text_files_are_one_error_before_work(
    small_run: Path, tmp_path: Path, case: str, suffix: str
) -> None:
    columns, message = BAD[case]
    path = tmp_path / f"{case}{suffix}"
    frame = pl.DataFrame(columns)
    frame.write_parquet(path) if suffix == ".parquet" else frame.write_ndjson(path)
    with pytest.raises(InputError, match=message) as err:
        run_tag(TagConfig(text_captions=path), small_run)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not (small_run / "tag").exists()


def test_missing_and_unreadable_files(small_run: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope.parquet does not exist: give a parquet or JSON"):
        run_tag(TagConfig(text_captions=tmp_path / "nope.parquet"), small_run)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not a parquet file at all")
    with pytest.raises(InputError, match=r"garbage.parquet cannot be read \(.*\): give a"):
        open_text_source(garbage)
    assert not (small_run / "tag").exists()


def test_json_lines_with_nulls_first(tmp_path: Path) -> None:
    """A text that is null in the first rows is still read as text (whole-file inference)."""
    path = tmp_path / "t.jsonl"
    lines = [{"id": i, "text": None} for i in range(200)] + [{"id": 500, "text": "late"}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert open_text_source(path).rows == 201


@pytest.fixture(scope="module")
def sampled(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("sampled-texts")
    run_sample(SampleConfig(source=synth_db, seed=4, ranges=[{"start": 0, "end": 2500,
                                                             "count": 900}, {"start": 2500}]),
               run_dir)  # fmt: skip
    return run_dir


@pytest.mark.parametrize("batch_posts", [97, 1_000_000])
def test_synthetic_db_in_batches(sampled: Path, tmp_path: Path, batch_posts: int) -> None:
    """Every third sampled post and some unsampled ids have a text, the file's rows
    shuffled: each post gets its own, whatever the batches."""
    shutil.copytree(sampled / "sample", tmp_path / "sample")
    ids = pl.read_parquet(sampled / "sample" / "posts.parquet")["id"].to_list()
    want = {i: f"Picture number {i}." for i in ids[::3]}
    rows = want | {i: "never sampled" for i in range(-5, 0)}
    frame = pl.DataFrame({"id": list(rows), "text": list(rows.values())}).sample(
        fraction=1.0, shuffle=True, seed=3)  # fmt: skip
    frame.write_parquet(tmp_path / "texts.parquet", row_group_size=100)
    manifest = run_tag(TagConfig(text_captions=tmp_path / "texts.parquet"), tmp_path,
                       batch_posts=batch_posts)  # fmt: skip
    got = captions(tmp_path)
    assert got["id"].to_list() == ids
    assert dict(zip(got["id"], got["text"], strict=True)) == {i: want.get(i) for i in ids}
    texts = manifest.counts["texts"]
    assert (texts["with_text"], texts["without_text"]) == (len(want), len(ids) - len(want))
    assert texts["file_rows"] == len(rows)
    assert read_manifest(tmp_path / "tag") == manifest


def test_the_demo_texts_join_for_two_posts_in_three(sampled: Path, synth_db: Path, tmp_path):
    """kohaku/demo/run.py's caption file: template sentences for the posts whose id is not a
    multiple of 3, a valid text file; the demo config joins it and draws texts."""
    from kohaku.config import load_config
    from kohaku.demo.run import DEMO_TOML, write_demo_texts

    path = tmp_path / "metadata" / "captions.jsonl"
    path.parent.mkdir()
    lines = write_demo_texts(synth_db, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == lines == open_text_source(path).rows > 1000
    assert all(r["id"] % 3 and r["text"].startswith("An anime picture of ") for r in rows)
    config = tmp_path / "demo.toml"
    config.write_text(DEMO_TOML.format(split=1500, first=300))
    cfg = load_config(config, overrides=[f'sample.source="{synth_db}"'])
    assert cfg.tag.text_captions == path and cfg.train.captions.uses_text
    assert cfg.train.captions.max_tokens == cfg.evaluate.max_tokens == 300
    shutil.copytree(sampled / "sample", tmp_path / "sample")
    texts = run_tag(cfg.tag, tmp_path).counts["texts"]
    ids = pl.read_parquet(tmp_path / "sample" / "posts.parquet")["id"]
    assert texts["with_text"] == int((ids % 3 != 0).sum()) and texts["without_text"] > 0
