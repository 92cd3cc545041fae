"""Metadata sources: the danbooru2023 SQLite file, parquet exports (files or folders, any
row order) and danbooru /posts.json pages give the same selection; thread count does
not matter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kohaku.demo.api_pages import write_api_pages
from kohaku.errors import InputError
from kohaku.sample import SampleConfig, run_sample
from tests.sample.reference import Metadata, chosen_by_range, expected_selection, export_parquet

ASSETS = Path(__file__).parents[1] / "assets"
REAL_PAGES = ["booru-rs_danbooru_posts_2023.json", "imgbrd-grabber_danbooru_posts_2020.json"]
RANGES = [{"start": 0, "end": 1500, "count": 400}, {"start": 1500, "count": "all"}]
OUTPUTS = ("posts", "post_tags", "tags", "fav_hist")
API_CATEGORY = {"general": 0, "artist": 1, "character": 2, "copyright": 3, "meta": 4}


def config(source: Path, **fields) -> SampleConfig:
    return SampleConfig(**{"source": source, "seed": 5, "ranges": RANGES, **fields})


def outputs(run_dir: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(run_dir / "sample" / f"{name}.parquet") for name in OUTPUTS}


def named_tags(run_dir: Path) -> pl.DataFrame:
    """(post_id, name, category) of the chosen posts, independent of tag ids."""
    out = outputs(run_dir)
    tags = out["tags"].rename({"id": "tag_id"})
    return (
        out["post_tags"]
        .join(tags, on="tag_id")
        .select("post_id", "name", "category")
        .sort("post_id", "name")
    )


@pytest.fixture(scope="module")
def baseline(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite source, one thread."""
    run_dir = tmp_path_factory.mktemp("baseline")
    run_sample(config(synth_db), run_dir, threads=1)
    return run_dir


def test_baseline_is_the_reference_selection(baseline: Path, meta: Metadata) -> None:
    expected = expected_selection(meta, config(Path("x")))
    assert chosen_by_range(outputs(baseline)["posts"], 2) == [e.chosen for e in expected]


def test_thread_count_does_not_matter(synth_db: Path, baseline: Path, tmp_path: Path) -> None:
    manifest = run_sample(config(synth_db), tmp_path, threads=2)
    for name, frame in outputs(tmp_path).items():
        assert_frame_equal(frame, outputs(baseline)[name])
    assert manifest.inputs["source_format"] == "sqlite"


def test_shuffled_parquet_export_gives_identical_outputs(
    synth_parquet: Path, baseline: Path, tmp_path: Path
) -> None:
    manifest = run_sample(config(synth_parquet), tmp_path, threads=2)
    assert manifest.inputs["source_format"] == "parquet"
    for name, frame in outputs(tmp_path).items():
        assert_frame_equal(frame, outputs(baseline)[name])


def test_parquet_folder_form(synth_db: Path, baseline: Path, tmp_path: Path) -> None:
    source = export_parquet(synth_db, tmp_path / "export", seed=99, parts=3)
    assert sorted(p.name for p in (source / "post").iterdir()) == [
        "part-0.parquet",
        "part-1.parquet",
        "part-2.parquet",
    ]
    run_sample(config(source), tmp_path / "run")
    for name, frame in outputs(tmp_path / "run").items():
        assert_frame_equal(frame, outputs(baseline)[name])


def test_parquet_single_files_and_folders_mixed(
    synth_parquet: Path, baseline: Path, tmp_path: Path
) -> None:
    source = tmp_path / "mixed"
    shutil.copytree(synth_parquet, source)
    (source / "tag").mkdir()
    (source / "tag.parquet").rename(source / "tag" / "all.parquet")
    run_sample(config(source), tmp_path / "run")
    assert_frame_equal(outputs(tmp_path / "run")["posts"], outputs(baseline)["posts"])


def test_api_json_pages_give_the_same_posts_and_tags(
    synth_db: Path, baseline: Path, tmp_path: Path
) -> None:
    pages = write_api_pages(synth_db, tmp_path / "pages", page_size=700)
    assert len(pages) == 5
    manifest = run_sample(config(tmp_path / "pages"), tmp_path / "run")
    assert manifest.inputs["source_format"] == "api_json"
    ours, base = outputs(tmp_path / "run"), outputs(baseline)
    assert_frame_equal(ours["posts"], base["posts"])
    assert_frame_equal(ours["fav_hist"], base["fav_hist"])
    assert_frame_equal(named_tags(tmp_path / "run"), named_tags(baseline))
    # the pages list tags by category: the post_tags order follows that
    ordered = ours["post_tags"].join(ours["tags"].rename({"id": "tag_id"}), on="tag_id")
    firsts = ordered.group_by("post_id", maintain_order=True).agg(pl.col("category").first())
    assert set(firsts["category"]) <= {0}  # a post with tags starts with its general ones


def test_api_json_keeps_the_newest_copy_of_a_refetched_post(tmp_path: Path) -> None:
    post = json.loads((ASSETS / REAL_PAGES[0]).read_text())[0]
    newer = {
        **post,
        "fav_count": 77,
        "tag_string_general": "solo long_hair",
        "updated_at": "2023-04-01T00:00:00.000-04:00",
    }
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "a.json").write_text(json.dumps([post]))
    (pages / "b.json").write_text(json.dumps([newer]))
    run_sample(SampleConfig(source=pages), tmp_path / "run")
    posts = outputs(tmp_path / "run")["posts"]
    assert posts.select("id", "fav_count").rows() == [(post["id"], 77)]
    general = named_tags(tmp_path / "run").filter(pl.col("category") == 0)
    assert general["name"].to_list() == ["long_hair", "solo"]


def real_posts() -> list[dict]:
    return [p for name in REAL_PAGES for p in json.loads((ASSETS / name).read_text())]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real danbooru /posts.json pages (tests/assets, from booru-rs and imgbrd-grabber)."""
    base = tmp_path_factory.mktemp("real")
    for name in REAL_PAGES:
        shutil.copy(ASSETS / name, base / name)
    run_sample(SampleConfig(source=base), base / "run")
    return base / "run"


def test_real_pages_posts(real_run: Path) -> None:
    posts = outputs(real_run)["posts"]
    expected = sorted(real_posts(), key=lambda p: p["id"])
    assert posts["id"].to_list() == [p["id"] for p in expected]  # all 20 are still images
    for row, post in zip(posts.iter_rows(named=True), expected, strict=True):
        for key in (
            "fav_count",
            "score",
            "md5",
            "file_ext",
            "file_url",
            "file_size",
            "image_width",
            "image_height",
        ):
            assert row[key] == post[key], key
        assert row["year"] == int(post["created_at"][:4])
        assert row["created_at"].isoformat(timespec="milliseconds") == _utc(post["created_at"])


def _utc(stamp: str) -> str:
    from datetime import UTC, datetime

    return datetime.fromisoformat(stamp).astimezone(UTC).isoformat(timespec="milliseconds")


def test_real_pages_ratings_2023(real_run: Path) -> None:
    """Pages fetched since danbooru's 2022 rating change: g, s, q, e are 0..3."""
    posts = outputs(real_run)["posts"]
    letters = {p["id"]: p["rating"] for p in json.loads((ASSETS / REAL_PAGES[0]).read_text())}
    got = dict(posts.filter(pl.col("id").is_in(list(letters))).select("id", "rating").rows())
    assert got == {i: "gsqe".index(letter) for i, letter in letters.items()}


def test_real_pages_tags(real_run: Path) -> None:
    expected = sorted(
        (p["id"], name, API_CATEGORY[cat])
        for p in real_posts()
        for cat in API_CATEGORY
        for name in p[f"tag_string_{cat}"].split()
    )
    assert sorted(named_tags(real_run).rows()) == expected
    tags = outputs(real_run)["tags"]
    assert tags["name"].is_unique().all() and tags["id"].is_unique().all()
    for p in real_posts():  # the pages' own tag_string is the union of the categories
        got = named_tags(real_run).filter(pl.col("post_id") == p["id"])["name"]
        assert sorted(got) == sorted(p["tag_string"].split())


@pytest.mark.parametrize(
    "filters, keep",
    [
        ({"required_tags": ["1girl"]}, lambda p: "1girl" in p["tag_string_general"].split()),
        ({"excluded_tags": ["highres"]}, lambda p: "highres" not in p["tag_string_meta"].split()),
        ({"image_exts": ["png"]}, lambda p: p["file_ext"] == "png"),
        ({"min_score": 2}, lambda p: p["score"] >= 2),
        ({"min_pixels": 2_000_000}, lambda p: p["image_width"] * p["image_height"] >= 2_000_000),
    ],
)
def test_real_pages_filters(tmp_path: Path, filters: dict, keep) -> None:
    for name in REAL_PAGES:
        shutil.copy(ASSETS / name, tmp_path / name)
    run_sample(SampleConfig(source=tmp_path, filters=filters), tmp_path / "run")
    expected = sorted(p["id"] for p in real_posts() if keep(p))
    assert 0 < len(expected) < 20
    assert outputs(tmp_path / "run")["posts"]["id"].to_list() == expected


# --- sources that cannot work --------------------------------------------------------------


def test_folder_without_metadata_files(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="holds no .parquet or .json files"):
        run_sample(SampleConfig(source=tmp_path / "meta"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("table", ["post", "tag", "posttagrelation"])
def test_parquet_folder_lacking_a_table(synth_parquet: Path, tmp_path: Path, table: str) -> None:
    source = tmp_path / "meta"
    shutil.copytree(synth_parquet, source)
    (source / f"{table}.parquet").unlink()
    with pytest.raises(InputError, match=f"lacks table '{table}'.*{table}.parquet or {table}/"):
        run_sample(SampleConfig(source=source), tmp_path / "run")
    assert not (tmp_path / "run" / "sample").exists()


def test_parquet_post_table_lacking_a_column(synth_parquet: Path, tmp_path: Path) -> None:
    source = tmp_path / "meta"
    shutil.copytree(synth_parquet, source)
    post = pl.read_parquet(source / "post.parquet").drop("fav_count", "md5")
    post.write_parquet(source / "post.parquet")
    with pytest.raises(InputError, match=r"table 'post' lacks columns \['md5', 'fav_count'\]"):
        run_sample(SampleConfig(source=source), tmp_path / "run")


def test_api_pages_lacking_a_field(tmp_path: Path) -> None:
    posts = json.loads((ASSETS / REAL_PAGES[0]).read_text())
    for p in posts:
        del p["tag_string_meta"]
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "p.json").write_text(json.dumps(posts))
    with pytest.raises(InputError, match=r"lack fields \['tag_string_meta'\]"):
        run_sample(SampleConfig(source=tmp_path / "pages"), tmp_path / "run")


def test_api_pages_not_json(tmp_path: Path) -> None:
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "p.json").write_text("<html>rate limited</html>")
    with pytest.raises(InputError, match="cannot read the /posts.json pages"):
        run_sample(SampleConfig(source=tmp_path / "pages"), tmp_path / "run")
    assert not (tmp_path / "run" / "sample").exists()
