"""The noise schedule a model is used with: what it predicts (epsilon or v) and whether its
schedule has zero terminal SNR (arXiv 2305.08891).

`combine_schedule`: the schedule of a base with a LoKr folded in (the LoKr's where it records
one, else the base's; a v-prediction base under an epsilon LoKr, or a zero-SNR base under a
LoKr trained without, is refused). Used by the merge, the export and the base-LoKr loader.
`schedule_source`: the schedule a run trains (and evaluates) a base on: the base's own,
checked against `train.loss`, or `train.loss`'s for a file that does not say.
Reads and writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kohaku.errors import ConfigError, InputError

if TYPE_CHECKING:
    from kohaku.sdxl.parts import ModelSource
    from kohaku.train.config import LossConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """What a merged model predicts (ModelSpec's `epsilon` or `v`), and on which schedule."""

    prediction: str
    zero_snr: bool = False


def combine_schedule(own: str | None, own_zero: bool, trained: str | None,
                     trained_zero: bool | None, lokr: str, model: str) -> Schedule:  # fmt: skip
    """`merged_schedule` on what a model and a LoKr say (None: not said); also the schedule
    of a base loaded with `train.model.lokr` merged in (`kohaku.sdxl.model`)."""
    if own == "v" and trained == "epsilon":
        raise InputError(f"{lokr} was trained for epsilon, but {model} is a v-prediction "
                         "model: merge it into an epsilon model")  # fmt: skip
    if own_zero and trained_zero is False:
        raise InputError(
            f"{lokr} was trained without zero terminal SNR, but {model} has a "
            "zero-terminal-SNR schedule (its ztsnr key or scheduler config): merge it into a "
            "model without one"
        )
    prediction = trained or own or "epsilon"
    zero = own_zero if trained_zero is None else trained_zero
    return Schedule(prediction, zero and prediction == "v")


def schedule_source(source: ModelSource, loss: LossConfig) -> ModelSource:
    """The base with the schedule `loss` trains on. A base that says what it predicts (a
    diffusers folder's scheduler, a single file's `v_pred` / `ztsnr` keys, its kohaku configs
    or `config_dir`) must agree with `loss`: ConfigError, naming the field to set. A single
    file that says nothing (SDXL 1.0's epsilon assumed) takes `loss`'s schedule: an unmarked
    v-prediction file, or an epsilon base trained into v-prediction as NoobAI-XL's was."""
    if (source.prediction, source.zero_snr) == (loss.prediction, loss.zero_terminal_snr):
        return source
    if source.declared:
        raise ConfigError(schedule_mismatch(source, loss))
    log.warning("%s does not say what it predicts (no v_pred key, no configs): training it as "
                "%s%s, as train.loss says", source.path, loss.prediction,
                " with zero terminal SNR" if loss.zero_terminal_snr else "")  # fmt: skip
    return replace(source, prediction=loss.prediction, zero_snr=loss.zero_terminal_snr)


def schedule_mismatch(source: ModelSource, loss: LossConfig) -> str:
    """One line: what the base is, what `train.loss` says, what to set."""
    zero = f"train.loss.zero_terminal_snr = {str(source.zero_snr).lower()}"
    if source.prediction != loss.prediction:
        also = f" and {zero}" if source.zero_snr else ""
        return (
            f"{source.path} is a {source.prediction} model but train.loss.prediction is "
            f'"{loss.prediction}": set train.loss.prediction = "{source.prediction}"{also}'
        )
    has = "has" if source.zero_snr else "does not have"
    return (
        f"{source.path} {has} a zero-terminal-SNR schedule (its ztsnr key or scheduler "
        f"config) but train.loss.zero_terminal_snr is "
        f"{str(loss.zero_terminal_snr).lower()}: set {zero}"
    )
