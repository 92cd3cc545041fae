"""Fixtures of the sample-stage tests: the synthetic DB read independently (sqlite3) and
exported to parquet with shuffled rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sample.reference import Metadata, export_parquet, read_metadata


@pytest.fixture(scope="session")
def meta(synth_db: Path) -> Metadata:
    return read_metadata(synth_db)


@pytest.fixture(scope="session")
def synth_parquet(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic DB as post.parquet, tag.parquet, posttagrelation.parquet, rows shuffled."""
    return export_parquet(synth_db, tmp_path_factory.mktemp("parquet") / "export", seed=11)
