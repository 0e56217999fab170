"""Run guard: the per-step book-keeping that keeps a long run honest.

Every training step, the guard sums over ranks (one small all-reduce) the step's loss, whether it was finite, and
the samples read and found bad by the data loader. A non-finite step is skipped on every rank at once (no
parameter update: the gradients are dropped before the optimizer step, so AdamW's moments and step count stay
as they were; the step still counts in `global_step`, as with AMP's skipped steps). After
`max_nonfinite_steps` non-finite steps in a row the module saves a checkpoint and stops with
`NonFiniteLossError`, naming the teacher and partition terms that went non-finite (a resume starts a new streak).
The bad-data fraction is judged on the global counts, so every rank stops together (radio.data.health).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor


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

    @property
    def must_stop(self) -> bool:
        return self.streak >= self.max_nonfinite_steps

    def stop_message(self, step: int, checkpoint: Optional[str], earlier: Optional[str] = None) -> str:
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
