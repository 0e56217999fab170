"""Checkpointing for long runs: atomic files, the last K kept, one at the end, a fixed directory for resumes.

`RadioCheckpoint` is Lightning's ModelCheckpoint with:
- atomic writes: every checkpoint is written to a temporary `NAME.tmp.<pid>.<random>` and renamed over `NAME` once
  complete (and fsync'ed), so a run killed at any moment leaves either the previous file or the new one, never a
  torn one; temporaries a killed run left are removed at the next start (one run per directory: radio.train.lock);
- keep-last-K: the K newest step checkpoints (`step=N.ckpt`, every `every_n_train_steps`) plus `last.ckpt`;
- a checkpoint at the end of training whatever the step;
- a directory that does not move between runs (`<default_root_dir>/checkpoints` unless `dirpath` is given), so
  `radio fit ... --ckpt_path last` finds the interrupted run;
- `--ckpt_path last` resumes from the newest intact checkpoint of the run that wrote last into the directory: the
  one with the highest global step among `last.ckpt` and the step checkpoints, whatever moment a kill hit (e.g.
  between writing `step=N.ckpt` and `last.ckpt`); a checkpoint that cannot be read (truncated, corrupt) is named in
  a warning and skipped. Each checkpoint records its run's id (`radio_run`), kept across resumes, so that the
  checkpoints of an older run left in the same directory are not taken for this one's.
"""
from __future__ import annotations

import glob
import logging
import os
import pickle
import re
import secrets
import shutil
import uuid
from datetime import timedelta
from typing import Any, NamedTuple
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)
_TEMPORARY = re.compile(r".+\.ckpt\.tmp(\.\d+\.[0-9a-f]+)?$")  # what atomic_save_checkpoint writes (and wrote)


def atomic_save_checkpoint(trainer: L.Trainer, filepath: str, weights_only: bool = False) -> None:
    """trainer.save_checkpoint into `filepath` through a temporary file and a rename (call on every rank)."""
    # unique per run and save; the same on every rank (sharded strategies write one path from all of them)
    tmp = trainer.strategy.broadcast(f"{filepath}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
    trainer.save_checkpoint(tmp, weights_only)  # rank 0 writes; ends with a barrier
    if trainer.is_global_zero:
        if os.path.isfile(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
            _fsync_dir(os.path.dirname(filepath) or ".")
        elif os.path.isdir(tmp):  # sharded (distributed) checkpoints are directories
            if os.path.isdir(filepath):
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


class CheckpointHead(NamedTuple):
    """What picking a checkpoint to resume needs: its global step and run id (None for older checkpoints)."""

    global_step: int
    run_id: str | None


def read_checkpoint_head(path: str) -> CheckpointHead:
    """Open a checkpoint file as `torch.load(weights_only=True)` does, with its tensors memory-mapped (not read):
    a truncated file has no zip central directory and fails here, as does one whose structure cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise
    except Exception:  # noqa: BLE001 - e.g. a file system without mmap: the plain load decides
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("global_step"), int):
        raise ValueError("not a Lightning checkpoint (no global_step)")
    run = ckpt.get("radio_run")
    return CheckpointHead(ckpt["global_step"], run.get("id") if isinstance(run, dict) else None)


def resume_checkpoint(dirpath: str, report: bool = True) -> str | None:
    """The checkpoint `--ckpt_path last` resumes from in `dirpath` (None if no file there is intact): among the
    intact `*.ckpt` files of the run that wrote the newest of them, the highest global step (`last*.ckpt` on a
    tie). Unreadable files are skipped, each named in a warning when `report`; a whole file that holds more than
    weights_only=True admits is refused (pickle.UnpicklingError naming it), as the Trainer's own load would."""
    heads: list[tuple[str, CheckpointHead, float]] = []
    for path in sorted(glob.glob(os.path.join(glob.escape(dirpath), "*.ckpt"))):
        if not os.path.isfile(path):
            continue
        try:
            heads.append((path, read_checkpoint_head(path), os.path.getmtime(path)))
        except pickle.UnpicklingError as e:  # whole, but holding objects beyond weights_only: refused, not skipped
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise pickle.UnpicklingError(f"{path}: {first}") from e
        except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it cannot be resumed from
            if report:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                log.warning("--ckpt_path last: skipping the checkpoint %s: it cannot be read (%s: %s)", path,
                            type(e).__name__, reason)
    if not heads:
        return None
    run = max(heads, key=lambda h: h[2])[1].run_id
    mine = [h for h in heads if h[1].run_id == run]
    return max(mine, key=lambda h: (h[1].global_step, os.path.basename(h[0]).startswith("last"), h[2]))[0]


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

    def __init__(self, every_n_train_steps: int = 1000, keep_last: int = 3, dirpath: str | None = None,
                 filename: str = "{step}", save_last: bool = True, verbose: bool = False,
                 train_time_interval: timedelta | None = None) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"RadioCheckpoint.every_n_train_steps: must be >= 1, got {every_n_train_steps}")
        if keep_last == 0 or keep_last < -1:
            raise ValueError(f"RadioCheckpoint.keep_last: must be >= 1 or -1 (all), got {keep_last}")
        super().__init__(dirpath=dirpath, filename=filename, monitor="step", mode="max", save_top_k=keep_last,
                         save_last=save_last, verbose=verbose, every_n_train_steps=every_n_train_steps,
                         train_time_interval=train_time_interval, save_on_train_epoch_end=False)
        self.keep_last = keep_last
        self.run_id = uuid.uuid4().hex  # replaced by the checkpoint's on a resume

    def _ensure_dirpath(self, trainer: L.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._ensure_dirpath(trainer)
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and os.path.isdir(str(self.dirpath)):  # writes that a kill interrupted
            for name in os.listdir(str(self.dirpath)):
                if _TEMPORARY.match(name):
                    tmp = os.path.join(str(self.dirpath), name)
                    if os.path.isdir(tmp):
                        shutil.rmtree(tmp)
                    else:
                        os.remove(tmp)

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        """`ckpt_path="last"` (called before setup): the newest intact checkpoint of the run (resume_checkpoint);
        Lightning's own choice where the directory holds no checkpoint file (e.g. sharded ones)."""
        self._ensure_dirpath(trainer)
        dirpath = str(self.dirpath)
        if not os.path.isdir(dirpath) or not any(os.path.isfile(p) for p in glob.glob(
                os.path.join(glob.escape(dirpath), "*.ckpt"))):
            return super()._find_last_checkpoints(trainer)
        path = resume_checkpoint(dirpath, report=trainer.is_global_zero)
        return {os.path.normpath(path)} if path else set()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["radio_run"] = {"id": self.run_id}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        run = checkpoint.get("radio_run")
        if isinstance(run, dict) and run.get("id"):
            self.run_id = str(run["id"])

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        atomic_save_checkpoint(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def save_now(self, trainer: L.Trainer, step_checkpoint: bool = True) -> str:
        """Save a step checkpoint and `last.ckpt` now (e.g. before stopping a run); returns `last.ckpt`'s path
        (or the step checkpoint's without save_last). `step_checkpoint=False`: only `last.ckpt` (when save_last),
        so that the kept step checkpoints stay those of before (e.g. of before a run went wrong)."""
        if self._last_global_step_saved != trainer.global_step:
            candidates = self._monitor_candidates(trainer)
            if step_checkpoint or not self.save_last:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        return self.last_model_path or self._last_checkpoint_saved

    def saved_before(self, step: int) -> str | None:
        """The kept step checkpoint with the most steps done, at most `step` (None if none)."""
        kept = [(int(v), p) for p, v in self.best_k_models.items() if int(v) <= step and os.path.isfile(p)]
        return max(kept)[1] if kept else None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A checkpoint of the final step, even when it is not a multiple of every_n_train_steps."""
        if not self._should_skip_saving_checkpoint(trainer):
            self.save_now(trainer)


def radio_checkpoint(trainer: L.Trainer) -> RadioCheckpoint | None:
    """The trainer's RadioCheckpoint callback, or None."""
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, RadioCheckpoint)), None)
