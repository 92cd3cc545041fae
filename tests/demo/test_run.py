"""The demo's closing table: one line per finished stage, read from the stage manifests."""

from __future__ import annotations

from kohaku.demo.run import stage_summary
from kohaku.stage import MANIFEST, Manifest


def write(run, stage: str, counts: dict, total: float) -> None:
    manifest = Manifest(stage=stage, stage_version="1", config_hash="h", inputs={},
                        outputs={}, counts=counts, timings={"total": total}, versions={},
                        created_at=0.0)  # fmt: skip
    (run / stage).mkdir(parents=True)
    (run / stage / MANIFEST).write_text(manifest.model_dump_json())


def test_stage_summary_says_what_each_finished_stage_made_and_where(tmp_path):
    write(tmp_path, "sample", {"posts": 2025, "ranges": []}, 1.36)
    write(tmp_path, "download", {"posts": 2025, "ok": 2020, "failed": 5, "bytes": 13822885}, 52.5)
    write(tmp_path, "train", {"steps": "forty"}, 86.4)  # not the counts it knows: listed as is
    lines = stage_summary(tmp_path)  # no tag, buckets, evaluate: not finished, not listed
    assert [line.split()[0] for line in lines] == ["stage", "sample", "download", "train"]
    assert lines[1].split() == ["sample", "1.4", "2025", "posts", "sample/posts.parquet"]
    assert "2020 of 2025 images, 5 failed (13,822,885 bytes)  download/images/" in lines[2]
    assert "steps=forty" in lines[3] and lines[3].endswith("train/lokr.safetensors")
    assert len({line.rindex("  ") for line in lines}) == 1  # the paths in one column
