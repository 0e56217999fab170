"""Run guard: the per-step book-keeping that keeps a long run honest.

Every training step, the guard sums over ranks (one small all-reduce) the step's loss, whether it was finite, and
the samples read and found bad by the data loader. A non-finite step is skipped on every rank at once (no
parameter update: the gradients are dropped before the optimizer step, so AdamW's moments and step count stay
as they were; the step still counts in `global_step`, as with AMP's skipped steps). After
`max_nonfinite_steps` non-finite steps in a row the module saves a checkpoint and stops with
`NonFiniteLossError`, naming the teacher and partition terms that went non-finite (a resume starts a new streak).
The module logs `train/loss` (nan for a skipped step) and the global counts (`data/*`). The bad-data fraction
is judged on the global counts against `data.max_bad_fraction`, so every rank stops together
(radio.data.health): past it, the step completes, then the run saves a checkpoint and stops with BadDataError
(`stop_if_needed`).

A run that stops saves a checkpoint first (`save_before_stop`). At the end of a run, or when it stops,
`health.json` beside the logs reports the samples read and found bad, the distinct bad items, the skipped
steps and why the run stopped if it did (`health_report`, `write_health_json`).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from radio.data.health import BadDataError, DataHealth, check_bad_fraction
from radio.train.callbacks import atomic_save_checkpoint, radio_checkpoint

HEALTH_NAME = "health.json"


class NonFiniteLossError(RuntimeError):
    """The loss stayed non-finite for too many steps in a row; the message names the terms and the checkpoint."""


class StepVerdict(NamedTuple):
    """skip: drop this step's update (the loss was non-finite on some rank); loss: the mean loss over ranks
    (nan when skipped); reads, bad: the samples read / found bad this step over all ranks."""

    skip: bool
    loss: float
    reads: int
    bad: int


@dataclass
class RunGuard:
    """Global counters of one run (identical on every rank; plain types, stored in checkpoints).

    Args:
        max_nonfinite_steps: non-finite steps in a row that stop the run.
    """

    max_nonfinite_steps: int = 5
    reads: int = 0
    bad: int = 0
    skipped: int = 0
    streak: int = 0
    first_bad_step: int = -1
    bad_terms: list[str] = field(default_factory=list)

    def observe(self, step: int, loss: Tensor, terms: dict[str, Tensor], reads: int, bad: int,
                reduce_sum: Callable[[Tensor], Tensor]) -> StepVerdict:
        """Record one step. `terms`: this rank's loss terms by name (e.g. "dino_v2/feature@448");
        `reduce_sum`: sum over ranks (the strategy's all-reduce; identity on one device)."""
        finite = bool(torch.isfinite(loss.detach()).item())
        local = torch.tensor([loss.detach().item() if finite else 0.0, 0.0 if finite else 1.0, 1.0, reads, bad],
                             dtype=torch.float64, device=loss.device)
        total = reduce_sum(local).cpu().tolist()
        loss_sum, nonfinite, ranks, reads_all, bad_all = total
        self.reads += int(reads_all)
        self.bad += int(bad_all)
        skip = nonfinite > 0
        if skip:
            self.skipped += 1
            if self.streak == 0:
                self.first_bad_step = step
            self.streak += 1
            bad_here = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
            self.bad_terms = bad_here or (["(another rank)"] if finite else ["(the summed loss)"])
        else:
            self.streak = 0
        mean = math.nan if skip else loss_sum / max(1.0, ranks)
        return StepVerdict(skip, mean, int(reads_all), int(bad_all))

    def data_error(self, datamodule: Any) -> BadDataError | None:
        """The BadDataError to stop the run with when the global bad fraction passed the datamodule's
        `max_bad_fraction` (radio.data.health.check_bad_fraction), else None."""
        if datamodule is None or not hasattr(datamodule, "max_bad_fraction"):
            return None
        try:
            check_bad_fraction(self.reads, self.bad, datamodule.max_bad_fraction,
                               datamodule.min_reads_for_bad_fraction, datamodule.health)
        except BadDataError as e:
            return e
        return None

    def counters(self) -> dict[str, float]:
        """What the module logs every step beside the loss."""
        return {"train/skipped_steps": float(self.skipped), "data/samples_read": float(self.reads),
                "data/bad_samples": float(self.bad)}

    @property
    def must_stop(self) -> bool:
        return self.streak >= self.max_nonfinite_steps

    def stop_message(self, step: int, checkpoint: str | None, earlier: str | None = None) -> str:
        """`earlier`: a checkpoint from before the streak began, offered in case the weights went bad before."""
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint could be saved"
        before = (f" (or from {earlier}, saved before step {self.first_bad_step}, if the loss stays non-finite "
                  "there)") if earlier else ""
        return (f"training stopped: the loss was non-finite for {self.streak} steps in a row (steps "
                f"{self.first_bad_step}..{step}; {self.skipped} skipped in all, limit "
                f"model.stability.max_nonfinite_steps = {self.max_nonfinite_steps}); non-finite terms (teacher/"
                f"term@partition resolution): {', '.join(self.bad_terms)}; no update was applied for them; "
                f"{saved}. Lower model.optimizer.lr or check those teachers' inputs, then resume with --ckpt_path "
                f"{checkpoint or 'last'}{before}")

    def state_dict(self) -> dict[str, Any]:
        return {"reads": self.reads, "bad": self.bad, "skipped": self.skipped, "streak": self.streak,
                "first_bad_step": self.first_bad_step, "bad_terms": list(self.bad_terms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters; the non-finite streak starts again at 0 (a resume after a stop is a new try, e.g.
        at a lower lr, and gets the whole `max_nonfinite_steps`)."""
        for k, v in state.items():
            if hasattr(self, k) and k != "max_nonfinite_steps":
                setattr(self, k, v)
        self.streak = 0


def stop_if_needed(trainer: L.Trainer, guard: RunGuard, bad_data: BadDataError | None,
                   write_health: Callable[[str], Any]) -> None:
    """After a step (on every rank): when the non-finite streak reached its limit, or `bad_data` is given (too
    much bad data), save a checkpoint, write health.json saying why the run stops (`write_health(why)`) and
    raise NonFiniteLossError or BadDataError with that message."""
    step = trainer.global_step - 1
    if guard.must_stop:
        cb = radio_checkpoint(trainer)
        earlier = cb.saved_before(guard.first_bad_step) if cb is not None else None
        text = guard.stop_message(step, save_before_stop(trainer, "nonfinite"), earlier)
        write_health(text)
        raise NonFiniteLossError(text)
    if bad_data is not None:
        path = save_before_stop(trainer, "baddata")
        text = (f"training stopped after step {step}: {bad_data}; "
                + (f"checkpoint saved to {path}" if path else "no checkpoint could be saved"))
        write_health(text)
        raise BadDataError(text)


def save_before_stop(trainer: L.Trainer, kind: str) -> str | None:
    """Save a checkpoint of the run so far before it stops (call on every rank): `last.ckpt` through the
    run's RadioCheckpoint (its kept step checkpoints stay those of before), else `{kind}-step=N.ckpt` in the
    trainer's root directory. Returns its path, or None (with a warning) when it could not be written."""
    cb = radio_checkpoint(trainer)
    try:
        if cb is not None:
            return cb.save_now(trainer, step_checkpoint=False)
        path = os.path.join(trainer.default_root_dir, f"{kind}-step={trainer.global_step}.ckpt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_save_checkpoint(trainer, path)
        return path
    except OSError as e:
        warnings.warn(f"could not save a checkpoint before stopping: {e}", stacklevel=1)
        return None


def health_report(guard: RunGuard, health: DataHealth, steps: int,
                  stopped: str | None = None) -> dict[str, Any]:
    """The run's health after `steps` steps: the guard's global counts, the distinct bad items of every rank
    (`health`, the first 1000 listed) and why the run stopped (None: it did not)."""
    g = guard
    return {"steps": int(steps), "samples_read": g.reads, "bad_reads": g.bad,
            "bad_fraction": g.bad / g.reads if g.reads else 0.0, "distinct_faults": health.total,
            "faults_by_kind": health.by_kind(), "faults": [f.to_dict() for f in health.all()[:1000]],
            "skipped_steps": g.skipped, "stopped": stopped}


def write_health_json(report: dict[str, Any], log_dir: str | Path) -> Path:
    """Write `report` to `health.json` in `log_dir` and print a one-line summary."""
    path = Path(log_dir) / HEALTH_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    kinds = ", ".join(f"{k}: {n}" for k, n in report["faults_by_kind"].items()) or "none"
    rank_zero_info(f"run health: {report['bad_reads']} bad of {report['samples_read']} samples read; "
                   f"{report['distinct_faults']} distinct bad items ({kinds}); {report['skipped_steps']} "
                   f"non-finite steps skipped -> {path}")
    return path
