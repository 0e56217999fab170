"""`radio fit`: LightningCLI over DistillModule and ShardDataModule, with recipe validation before compute.

Checkpoints are loaded with `weights_only=True` (Lightning's own option, on by default here): a checkpoint that
carries pickled objects beyond tensors and plain containers is refused with `UnsafeCheckpointError` and nothing in
it runs. A checkpoint's `hyper_parameters` are not merged over the recipe: the recipe alone says what is built
(`RadioCLI._parse_ckpt_path`). A recipe that lists no checkpoint callback gets
`radio.train.callbacks.RadioCheckpoint` (atomic writes, the last K kept, `RUN/checkpoints/last.ckpt`).
One fit runs per `trainer.default_root_dir` (a lock file held for the run's life, radio.train.lock), and the output
directories are checked writable before anything is computed.
"""
from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from radio.data.datamodule import ShardDataModule
from radio.train.callbacks import RadioCheckpoint
from radio.train.lock import RunLock, check_writable, launching_process
from radio.train.module import DistillModule
from radio.train.recipe_checks import ConfigError, check_recipe, teacher_grid_errors


class _NoAdverts(logging.Filter):
    """Drop Lightning's product tips ("Tip: ... try installing litlogger") from every run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
log = logging.getLogger(__name__)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded with weights_only=True (it holds pickled code or objects)."""


class RadioCLI(LightningCLI):
    """LightningCLI whose recipes are checked (radio.train.recipe_checks) before any class is instantiated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._run_lock: RunLock | None = None
        try:
            super().__init__(*args, **kwargs)  # runs the subcommand
        finally:
            if self._run_lock is not None:
                self._run_lock.release()

    def _parse_ckpt_path(self) -> None:
        """The recipe is the truth: a checkpoint's hyper-parameters are not merged over it (LightningCLI would).

        A checkpoint is a file the user did not write; merged, its `hyper_parameters` could name any teacher
        (an hf teacher with trust_remote_code: true runs the model's own code) or class. The checkpoint's weights
        are still loaded by the Trainer, and a model that does not match the recipe fails that load loudly.
        """

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        check_recipe(cfg)
        if self.subcommand == "fit" and launching_process():
            self._run_lock = RunLock(cfg.get("trainer.default_root_dir") or os.getcwd()).acquire()
            old = self._run_lock.taken_over
            if old:
                log.warning("took over %s from a run that ended without releasing it (pid %s on host %s, started "
                            "%s)", self._run_lock.path, old.get("pid"), old.get("host"), old.get("started"))

    def _check_output_dirs(self) -> None:
        """Before any step: every directory the run will write into exists (or can be made) and takes a file."""
        trainer = self.trainer
        dirs = [("trainer.default_root_dir", trainer.default_root_dir)]
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, RadioCheckpoint):
                cb._ensure_dirpath(trainer)
            if dirpath := getattr(cb, "dirpath", None):
                dirs.append(("the checkpoint directory", dirpath))
        for lg in trainer.loggers:
            d = getattr(lg, "root_dir", None) or lg.save_dir
            if d:
                dirs.append(("the log directory", d))
        for what, d in dirs:
            check_writable(str(d), what)

    def _check_built(self) -> None:
        """Checks that need the built teachers (before any step): every teacher reaches every grid it is asked
        for, and a mosaic teacher's summary head gets trained somewhere."""
        errors = teacher_grid_errors(self.model, self.datamodule)
        try:
            self.model.check_schedule(self.datamodule.schedule)
        except ValueError as e:
            errors.append(str(e))
        if errors:
            raise ConfigError("invalid recipe:\n  " + "\n  ".join(errors))

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """A recipe without a checkpoint callback gets RadioCheckpoint's defaults (atomic, keep-last-K,
        `<default_root_dir>/checkpoints/last.ckpt` for `--ckpt_path last`) instead of Lightning's plain one."""
        listed = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_checkpointing", True) is not False and \
                not any(isinstance(c, ModelCheckpoint) for c in listed):
            config["callbacks"] = [*(config.get("callbacks") or []), RadioCheckpoint()]
        return super()._instantiate_trainer(config, callbacks)

    def _safe_loading(self) -> None:
        kwargs = self.config_init[self.subcommand]
        if "weights_only" in kwargs and kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True

    def before_fit(self) -> None:
        self._check_output_dirs()
        self._check_built()
        self._safe_loading()

    def before_validate(self) -> None:
        self._check_built()
        self._safe_loading()


def run_fit(argv: Sequence[str] | None = None, subcommand: str = "fit") -> RadioCLI:
    """Run `radio fit` with the given arguments (e.g. ["--config", "recipes/demo.yaml"])."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        try:
            return RadioCLI(DistillModule, ShardDataModule, args=[subcommand, *(argv or [])],
                            save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                            parser_kwargs={"prog": "radio"})
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"refusing to load the checkpoint {_ckpt_arg(argv)}: it holds pickled objects that only an "
                "unrestricted unpickler would run, and radio loads checkpoints with weights_only=True (nothing in "
                "it was executed). "
                f"Use a checkpoint written by radio fit. Details: {str(e).splitlines()[0]}") from e


def _ckpt_arg(argv: Sequence[str] | None) -> str:
    args = list(argv or [])
    for i, a in enumerate(args):
        if a == "--ckpt_path" and i + 1 < len(args):
            return repr(args[i + 1])
        if a.startswith("--ckpt_path="):
            return repr(a.split("=", 1)[1])
    return "(from the recipe)"
