"""The trainer's metric log across a resume: what a killed process logged past the
checkpoint leaves metrics.jsonl, and TensorBoard purges it (`MetricLog.start`)."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kohaku.train.metrics import MetricLog


def line(step: int, loss: float) -> dict:
    return {"step": step, "total": 6, "loss": loss, "lr_unet": 1e-4, "lr_text": None,
            "images_per_s": 1.0}  # fmt: skip


def test_a_resume_forgets_the_steps_after_its_checkpoint(tmp_path):
    first = MetricLog(tmp_path)
    assert first.start(0) == 0  # nothing logged yet
    for step in range(1, 6):  # killed after step 5; the newest checkpoint is step 3
        first.write(line(step, 1.0))
    first.close()

    again = MetricLog(tmp_path)
    assert again.start(3) == 2
    for step in range(4, 7):
        again.write(line(step, 2.0))
    again.close()

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], x["loss"]) for x in lines] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0),
                                                       (5, 2.0), (6, 2.0)]  # fmt: skip
    assert not list(tmp_path.glob("*.tmp"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0)]


def test_a_start_from_scratch_forgets_a_run_killed_before_its_first_checkpoint(tmp_path):
    log = MetricLog(tmp_path)
    log.write(line(1, 1.0))
    log.close()
    assert MetricLog(tmp_path).start(0) == 1
    assert (tmp_path / "metrics.jsonl").read_text() == ""
