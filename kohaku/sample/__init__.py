"""Sample stage: seeded post selection over danbooru metadata in DuckDB.

`config` (the `[sample]` section), `run` (the stage: reads the metadata source through
`kohaku.metadata`, writes `<run>/sample/`), `select` and `subsets` (the draws), `keys`
(the seeded sampling key; `sample_key` is also the evaluate stage's reference draw).
"""

from kohaku.sample.config import FilterConfig, IdRange, SampleConfig
from kohaku.sample.keys import sample_key
from kohaku.sample.run import SAMPLE_VERSION, run_sample

__all__ = ["FilterConfig", "IdRange", "SampleConfig", "SAMPLE_VERSION", "run_sample", "sample_key"]
