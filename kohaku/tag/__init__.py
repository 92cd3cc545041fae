"""Tag stage: captions from danbooru tags and metadata, with Polars.

`config` (the `[tag]` section), `run` (the stage: reads `<run>/sample/`, writes
`<run>/tag/`), `captions` (tag groups and their layout), `quality` (quality tags from
fav_count percentiles), `texts` (natural-language captions joined by post id). The train
and evaluate stages lay captions out as this stage does: `lay_out`, `LAYOUTS`, `as_strings`.
"""

from kohaku.tag.captions import LAYOUTS, as_strings, lay_out
from kohaku.tag.config import QualityConfig, TagConfig
from kohaku.tag.run import TAG_VERSION, run_tag

__all__ = [
    "LAYOUTS",
    "QualityConfig",
    "TagConfig",
    "TAG_VERSION",
    "as_strings",
    "lay_out",
    "run_tag",
]
