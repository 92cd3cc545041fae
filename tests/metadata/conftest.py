"""Fixtures of the sync tests: a corpus of real-format /posts.json posts (the synthetic DB),
a store imported from its older part (ids <= 2000), and the fake API serving all of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from kohaku.demo.api_pages import write_api_pages
from kohaku.fetch import FetchConfig
from kohaku.metadata import snapshot
from kohaku.metadata.config import SyncConfig
from kohaku.metadata.store import import_metadata

OLD_MAX = 2000  # the imported store holds the posts up to this id
WIDTHS = {"partition_ids": 500, "tag_partition_ids": 20_000}


@pytest.fixture(scope="session")
def corpus(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The 3,000 synthetic posts as danbooru API objects, by id."""
    pages = write_api_pages(synth_db, tmp_path_factory.mktemp("pages"))
    return sorted((p for f in pages for p in json.loads(f.read_text())), key=lambda p: p["id"])


def import_posts(posts: list[dict], store: Path) -> snapshot.Snapshot:
    """A store imported from these posts (one /posts.json page file)."""
    pages = store.with_name(store.name + "-pages")
    pages.mkdir(parents=True)
    (pages / "posts.json").write_text(json.dumps(posts))
    return import_metadata(pages, store, **WIDTHS)


@pytest.fixture(scope="session")
def base_store(corpus: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "store"
    import_posts([p for p in corpus if p["id"] <= OLD_MAX], path)
    return path


@pytest.fixture(scope="session")
def truth(corpus: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store imported from the whole corpus at once: what a sync must end with."""
    path = tmp_path_factory.mktemp("truth") / "store"
    import_posts(corpus, path)
    return path


@pytest.fixture
def store(base_store: Path, tmp_path: Path) -> Path:
    """A private copy of the imported store."""
    return Path(shutil.copytree(base_store, tmp_path / "store"))


def sync_config(store: Path, url: str, **fetch) -> SyncConfig:
    policy = {"allowed_hosts": ["127.0.0.1"], "per_host_rate": 500.0, "retries": 3,
              "backoff_base": 0.01, "backoff_max": 2.0, **fetch}  # fmt: skip
    return SyncConfig(store=store, api_url=url, page_limit=100, recent_window=300,
                      fetch=FetchConfig(**policy))  # fmt: skip


def posts_of(store: Path, name: str = "latest") -> pl.DataFrame:
    return pl.read_parquet(snapshot.read_snapshot(store, name).files(store, "post")).sort("id")


def named_tags(store: Path, name: str = "latest") -> pl.DataFrame:
    """(post_id, tag name, category) rows: comparable whatever the tag ids are."""
    snap = snapshot.read_snapshot(store, name)
    rel = pl.read_parquet(snap.files(store, "posttagrelation"))
    tags = pl.read_parquet(snap.files(store, "tag")).rename({"id": "tag_id"})
    return rel.join(tags, on="tag_id").select("post_id", "name", "type").sort("post_id", "name")
