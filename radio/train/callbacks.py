"""Checkpointing for long runs: atomic files, the last K kept, one at the end, a fixed directory for resumes.

`RadioCheckpoint` is Lightning's ModelCheckpoint with:
- atomic writes: every checkpoint is written to `NAME.tmp` and renamed over `NAME` once complete (and fsync'ed),
  so a run killed at any moment leaves either the previous file or the new one, never a torn one;
- keep-last-K: the K newest step checkpoints (`step=N.ckpt`, every `every_n_train_steps`) plus `last.ckpt`;
- a checkpoint at the end of training whatever the step;
- a directory that does not move between runs (`<default_root_dir>/checkpoints` unless `dirpath` is given), so
  `radio fit ... --ckpt_path last` finds the newest `last.ckpt` of the interrupted run.
"""
from __future__ import annotations

import glob
import os
from datetime import timedelta
from typing import Optional
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def atomic_save_checkpoint(trainer: "L.Trainer", filepath: str, weights_only: bool = False) -> None:
    """trainer.save_checkpoint into `filepath` through a temporary file and a rename (call on every rank)."""
    tmp = f"{filepath}.tmp"
    trainer.save_checkpoint(tmp, weights_only)  # rank 0 writes; ends with a barrier
    if trainer.is_global_zero:
        if os.path.isfile(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
            _fsync_dir(os.path.dirname(filepath) or ".")
        elif os.path.isdir(tmp):  # sharded (distributed) checkpoints are directories
            if os.path.isdir(filepath):
                import shutil

                shutil.rmtree(filepath)
            os.replace(tmp, filepath)
    trainer.strategy.barrier("radio-atomic-save")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RadioCheckpoint(ModelCheckpoint):
    """Atomic, keep-last-K step checkpoints plus `last.ckpt` (see the module docstring).

    Args:
        every_n_train_steps: save every this many optimizer steps (and at the end of training).
        keep_last: step checkpoints kept (the newest); -1 keeps all.
        dirpath: checkpoint directory (default: `<trainer.default_root_dir>/checkpoints`).
        filename: checkpoint name pattern (default "step={step}").
        save_last: also keep `last.ckpt` (what `--ckpt_path last` loads).
        train_time_interval: save also after this much training time.
    """

    def __init__(self, every_n_train_steps: int = 1000, keep_last: int = 3, dirpath: Optional[str] = None,
                 filename: str = "{step}", save_last: bool = True, verbose: bool = False,
                 train_time_interval: Optional[timedelta] = None) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"RadioCheckpoint.every_n_train_steps: must be >= 1, got {every_n_train_steps}")
        if keep_last == 0 or keep_last < -1:
            raise ValueError(f"RadioCheckpoint.keep_last: must be >= 1 or -1 (all), got {keep_last}")
        super().__init__(dirpath=dirpath, filename=filename, monitor="step", mode="max", save_top_k=keep_last,
                         save_last=save_last, verbose=verbose, every_n_train_steps=every_n_train_steps,
                         train_time_interval=train_time_interval, save_on_train_epoch_end=False)
        self.keep_last = keep_last

    def _ensure_dirpath(self, trainer: "L.Trainer") -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._ensure_dirpath(trainer)
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero:  # files of a write that a kill interrupted
            for tmp in glob.glob(os.path.join(str(self.dirpath), "*.tmp")):
                os.remove(tmp)

    def _find_last_checkpoints(self, trainer: "L.Trainer") -> set[str]:
        self._ensure_dirpath(trainer)  # called for `ckpt_path="last"` before setup
        return super()._find_last_checkpoints(trainer)

    def _save_checkpoint(self, trainer: "L.Trainer", filepath: str) -> None:
        atomic_save_checkpoint(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def save_now(self, trainer: "L.Trainer") -> str:
        """Save a step checkpoint and `last.ckpt` now (e.g. before stopping a run); returns `last.ckpt`'s path
        (or the step checkpoint's without save_last)."""
        if self._last_global_step_saved != trainer.global_step:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        return self.last_model_path or self._last_checkpoint_saved

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """A checkpoint of the final step, even when it is not a multiple of every_n_train_steps."""
        if not self._should_skip_saving_checkpoint(trainer):
            self.save_now(trainer)
