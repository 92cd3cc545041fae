"""Sample stage: seeded post selection over danbooru metadata in DuckDB."""

from kohaku.sample.config import FilterConfig, IdRange, SampleConfig
from kohaku.sample.run import SAMPLE_VERSION, run_sample

__all__ = ["FilterConfig", "IdRange", "SampleConfig", "SAMPLE_VERSION", "run_sample"]
