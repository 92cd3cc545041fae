"""Tag stage: captions from danbooru tags and metadata, with Polars."""

from kohaku.tagging.config import QualityConfig, TagConfig
from kohaku.tagging.run import TAG_VERSION, run_tag

__all__ = ["QualityConfig", "TagConfig", "TAG_VERSION", "run_tag"]
