"""A progress artifact that is written at most every few seconds, and always at 100%.

Each update is an API call that writes the server's database (SQLite on one machine,
shared with the task-run recorder, the event persister and the log writer); a stage that
reported every picture or every logged step would write several times a second."""

from __future__ import annotations

import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact

EVERY_S = 2.0


class Progress:
    """`progress(percent, description)` updates the artifact unless the last update was
    less than `every` seconds ago (the final 100% always goes through)."""

    def __init__(self, description: str, every: float = EVERY_S):
        self.id = create_progress_artifact(0.0, description=description)
        self.every, self.last = every, time.monotonic()

    def __call__(self, percent: float, description: str | None = None) -> None:
        now = time.monotonic()
        if percent < 100.0 and now - self.last < self.every:
            return
        self.last = now
        update_progress_artifact(self.id, percent, description=description)
