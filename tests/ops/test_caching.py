"""A changed config field re-executes exactly the stages it affects (the pipeline flow
against a local Prefect API, stage executions counted from the API), and a re-executed
stage really starts over: download ledgers and train checkpoints made for another config
are not resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kohaku.config import load_config
from kohaku.demo.images import ImageServer, stamp_md5s
from kohaku.demo.run import DEMO_URL_KEY
from kohaku.demo.synth import generate_danbooru_db
from tests.ops.flowruns import executions
from tests.prefect_server import DATA_ONLY


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("caching")
    db = root / "metadata" / "danbooru.db"
    db.parent.mkdir()
    generate_danbooru_db(db, 300, seed=1)
    stamp_md5s(db)
    (root / "data.toml").write_text(DATA_ONLY)
    with ImageServer(db) as images:
        yield root, images.url_template


def test_a_changed_field_reexecutes_exactly_the_stages_it_affects(prefect_api, demo_data):
    from flows.pipeline import pipeline

    root, url = demo_data

    def run(*overrides: str):
        cfg = load_config(root / "data.toml", None, [f"{DEMO_URL_KEY}={url}", *overrides])
        state = pipeline(cfg, return_state=True)
        assert state.is_completed()
        return executions(state.state_details.flow_run_id)

    data = ["sample", "tag", "prepare-source", "download-shard", "download-manifest", "buckets"]
    assert run() == dict.fromkeys(data, 1)
    image = next((root / "run" / "download" / "images").rglob("*.webp"))
    before = image.read_bytes()
    downloads = ["prepare-source", "download-shard", "download-manifest", "buckets"]
    assert run("download.quality=60") == dict.fromkeys(downloads, 1)
    assert image.read_bytes() != before  # re-encoded, not resumed from the old ledger
    assert run("download.quality=60", "tag.layout='delta'") == {"tag": 1, "prepare-source": 1}
    # how posts are fetched (threads, rate, url) changes no file: nothing runs again
    assert run("download.quality=60", "tag.layout='delta'", "download.threads=2") == {
        "prepare-source": 1}  # fmt: skip


def test_train_starts_over_when_its_config_or_data_changed(tmp_path: Path):
    from kohaku.stage import build_stage, write_manifest
    from kohaku.train.config import TrainConfig
    from kohaku.train.run import _start_over_if_changed

    def stage(name: str) -> None:
        with build_stage(tmp_path, name) as build:
            write_manifest(build, stage_version="1", config_hash=name, inputs={}, outputs={},
                           counts={}, versions={})  # fmt: skip

    stage("buckets"), stage("tag")
    cfg = TrainConfig.model_validate({"model": {"path": str(tmp_path / "model")}})
    checkpoint = tmp_path / "train" / "checkpoints" / "step-000002" / "meta.json"
    _start_over_if_changed(cfg, tmp_path)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text(json.dumps({"step": 2}))
    _start_over_if_changed(cfg, tmp_path)  # same config and data: resumed
    assert checkpoint.is_file()
    _start_over_if_changed(cfg.model_copy(update={"max_steps": 9}), tmp_path)
    assert not checkpoint.exists()  # another config: started over, the old one set aside
    assert (tmp_path / "train.superseded" / "checkpoints" / "step-000002").is_dir()
    checkpoint.parent.mkdir(parents=True)
    stage("tag")  # the captions were rebuilt
    _start_over_if_changed(cfg.model_copy(update={"max_steps": 9}), tmp_path)
    assert not checkpoint.exists()


def test_an_input_file_rewritten_at_its_path_changes_the_task_key(tmp_path: Path):
    """`file_key` is what the tag task (`tag.text_captions`) and the train task (the base
    model and `train.model.lokr`) are keyed on besides their config, which names the file
    only by its path: new content there is no stale cache hit."""
    import os

    from tasks.policy import file_key

    small, large = tmp_path / "texts.jsonl", tmp_path / "base.safetensors"
    small.write_text('{"id": 1, "text": "a"}\n')
    large.write_bytes(b"\0" * (2 << 20))  # past the 1 MiB that are hashed: size and mtime
    os.utime(large, ns=(1, 1))
    before = file_key(small), file_key(large)
    stat = small.stat()
    small.write_text('{"id": 1, "text": "b"}\n')  # same size, same mtime: the content tells
    os.utime(small, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    large.write_bytes(b"\1" * (2 << 20))
    assert file_key(small) != before[0] and file_key(large) != before[1]
    assert file_key(None) is None and file_key(tmp_path / "missing") is None
