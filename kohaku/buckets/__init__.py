"""The buckets stage: the download ledgers gathered into the training set's image list,
with a histogram of images per bucket. The download stage places each image in its bucket
(`kohaku.download.placement`); this stage reads its ledgers.

`config` (`BucketsConfig`, empty), `run` (the stage), `histogram` (the chart).
"""

from kohaku.buckets.config import BucketsConfig
from kohaku.buckets.histogram import histogram_markdown
from kohaku.buckets.run import BUCKETS_VERSION, OUTPUTS, STAGE, run_buckets

__all__ = [
    "BUCKETS_VERSION",
    "BucketsConfig",
    "OUTPUTS",
    "STAGE",
    "histogram_markdown",
    "run_buckets",
]
