"""The buckets stage's config (none yet: `BucketsConfig` is empty). Reads and writes nothing."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BucketsConfig(BaseModel):
    """No settings yet: the bucket set and every placement come from the download stage
    (`DownloadConfig.buckets`), whose config hash is among this stage's inputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
