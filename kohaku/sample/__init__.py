"""Sample stage: seeded post selection over danbooru metadata in DuckDB.

`config` (the `[sample]` section), `run` (the stage: reads the metadata source through
`kohaku.metadata`, writes `<run>/sample/`), `select` and `subsets` (the draws), `keys`
(the seeded sampling key; `sample_key` is also the evaluate stage's reference draw).

`run_sample` and `SAMPLE_VERSION` load on first use: the stages that only read the config
(tag, and through it the trainer) do not import DuckDB (35 MB of resident memory).
"""

from typing import Any

from kohaku.sample.config import FilterConfig, IdRange, SampleConfig
from kohaku.sample.keys import sample_key

__all__ = ["FilterConfig", "IdRange", "SampleConfig", "SAMPLE_VERSION", "run_sample", "sample_key"]


def __getattr__(name: str) -> Any:
    if name in ("run_sample", "SAMPLE_VERSION"):
        from kohaku.sample import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
