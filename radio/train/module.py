"""The distillation system as a LightningModule.

Per training step (radio.data.batch.TrainBatch: one Partition per partition of the step's stage), the
objective (radio.train.objective) gets every partition's targets, streams them into the normalizers still
estimating and weighs the student's loss against them; the partitions' weighted losses make one optimizer
step. Each step's randomness (the student's position-embedding crops) is seeded from (seed, step, rank), so a
resumed run repeats the interrupted one. The guard (radio.train.guard) skips non-finite steps, counts bad data
and stops a run that goes wrong, with a checkpoint and `health.json`; validation (radio.train.validation)
measures fidelity per teacher and resolution. Checkpoints carry the normalizers' statistics merged over ranks
(radio.normalize), so a resume on any number of ranks continues their estimation exactly; a resume trains at
the recipe's `model.optimizer.lr` (radio.train.optim.use_recipe_lr).

References: AM-RADIO (Ranzinger et al., CVPR 2024); PHI-S (Ranzinger et al., 2024); RADIOv2.5 (Heinrich et al.,
2024).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from torch import Tensor

import teachers as teacher_lib
from radio.cache.checks import check_against_teachers
from radio.data.batch import ImageBatch, TrainBatch
from radio.data.health import BadDataError, gather_health
from radio.losses import LossConfig
from radio.model import AdaptorConfig, ModelConfig, RADIOModel, StudentConfig, TeacherHead
from radio.normalize import Normalizer, keep_statistics_local, restart_statistics, store_global_statistics
from radio.train.config import (
    NormalizationConfig,
    OptimConfig,
    StabilityConfig,
    TeacherEntry,
    ValidationConfig,
    coerce,
    coerce_teachers,
    to_plain,
)
from radio.train.guard import NonFiniteLossError, RunGuard, health_report, stop_if_needed, write_health_json
from radio.train.objective import Objective
from radio.train.optim import build_optimizer, total_steps, use_recipe_lr
from radio.train.targets import Targets
from radio.train.validation import FidelityValidation

__all__ = ["DistillModule", "NonFiniteLossError"]
NORMALIZERS = "model.normalizers."  # the normalizers' prefix in the state dict


class DistillModule(L.LightningModule):
    """Multi-teacher, multi-resolution distillation into one student.

    Args:
        student: the student's architecture.
        teachers: the teachers, their loss weights, normalizers and mosaic use.
        loss: loss choices.
        optimizer: AdamW + warm-up/cosine schedule.
        adaptor: adaptor MLP shape.
        normalization: how long the normalizers estimate their statistics.
        validation: the resolutions at which fidelity is measured.
        stability: what happens when the loss goes non-finite.
    """

    def __init__(self, student: StudentConfig, teachers: list[TeacherEntry], loss: LossConfig = LossConfig(),
                 optimizer: OptimConfig = OptimConfig(), adaptor: AdaptorConfig = AdaptorConfig(),
                 normalization: NormalizationConfig = NormalizationConfig(),
                 validation: ValidationConfig = ValidationConfig(),
                 stability: StabilityConfig = StabilityConfig()) -> None:
        super().__init__()
        student = coerce(StudentConfig, student, "model.student")
        self.entries = entries = coerce_teachers(teachers, "model.teachers")
        self.loss_cfg = coerce(LossConfig, loss, "model.loss")
        self.optim_cfg = coerce(OptimConfig, optimizer, "model.optimizer")
        self.norm_cfg = coerce(NormalizationConfig, normalization, "model.normalization")
        self.val_cfg = coerce(ValidationConfig, validation, "model.validation")
        self.stability_cfg = coerce(StabilityConfig, stability, "model.stability")
        adaptor = coerce(AdaptorConfig, adaptor, "model.adaptor")
        sections = {"student": student, "teachers": entries, "loss": self.loss_cfg,
                    "optimizer": self.optim_cfg, "adaptor": adaptor, "normalization": self.norm_cfg,
                    "validation": self.val_cfg, "stability": self.stability_cfg}
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({k: to_plain(v) for k, v in sections.items()})
        # Teachers are deliberately not submodules: never in the optimizer, the state dict or checkpoints.
        self._teachers = {e.name: teacher_lib.build(e.spec()) for e in entries}
        heads = [TeacherHead(e.name, t.summary_dim or None, t.feature_dim, t.patch_size, e.normalizer)
                 for e, t in zip(entries, self._teachers.values())]
        self.model = RADIOModel(ModelConfig(student=student, teachers=heads, adaptor=adaptor))
        keep_statistics_local(self, NORMALIZERS, self.model.normalizers)
        self.objective = Objective(self._teachers, entries, self.loss_cfg, self.norm_cfg.estimate_steps,
                                   self.patch_size)
        self.validation = FidelityValidation(self.val_cfg)
        self.guard = RunGuard(self.stability_cfg.max_nonfinite_steps)
        self._skip_update = False
        self._bad_data: BadDataError | None = None  # too much bad data: stop after this step

    @property
    def teachers(self) -> dict[str, teacher_lib.Teacher]:
        return self._teachers

    @property
    def patch_size(self) -> int:
        return self.model.resolution_step

    @property
    def datamodule(self) -> Any:
        """The trainer's datamodule (None: no trainer or no datamodule)."""
        return getattr(self._trainer, "datamodule", None)

    def primary_resolution(self, fallback: int) -> int:
        """The datamodule's main training resolution (`fallback` without one)."""
        return int(getattr(self.datamodule, "resolution", fallback))

    def _teachers_to_device(self) -> None:
        for t in self._teachers.values():
            if t.device != self.device:
                t.to(self.device)

    def on_fit_start(self) -> None:
        self._teachers_to_device()
        dm = self.datamodule
        if getattr(dm, "schedule", None) is not None:
            self.check_schedule(dm.schedule)
        if getattr(dm, "cache_layout", None) is not None:  # training reads some teachers from a feature cache
            grid = (dm.resolution // self.patch_size,) * 2
            check_against_teachers(dm.cache_layout, self._teachers, {e.name: e.spec() for e in self.entries},
                                   {e.name: e.mosaic for e in self.entries}, grid)

    def check_schedule(self, schedule) -> None:
        """Fail if a summary teacher would only ever see mosaics (its summary head would never train)."""
        self.objective.check_schedule(schedule)

    # -- training --------------------------------------------------------------------------------------------
    def partition_losses(self, images: Tensor, targets: dict[str, Targets]) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted loss of one partition and its per-teacher terms ("{teacher}/feature", "{teacher}/summary")."""
        total, terms, _ = self.objective.loss(self.model, self.model.forward_tokens(images), targets)
        return total, terms

    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor:
        self._teachers_to_device()
        parts = [p for p in batch.partitions if p.size > 0]  # every sample of a partition may be bad
        targets = [self.objective.targets(p) for p in parts]
        supervised = {n for p in batch.partitions for n in (p.teachers or self.objective.entry)}
        self.objective.observe(self.model.normalizers, targets, self.global_step, supervised)
        # DDP: every parameter must be used, also by a step with an empty partition
        total = self._touch_parameters() if len(parts) < len(batch.partitions) else None
        per_term: dict[str, list[Tensor]] = {}
        named: dict[str, Tensor] = {}
        for p, tg in zip(parts, targets):
            loss, terms = self.partition_losses(p.image, tg)
            total = p.weight * loss if total is None else total + p.weight * loss
            bs, r = p.size, p.image.shape[-1]
            self.log_dict({f"train/{k}@{r}": v for k, v in terms.items()}, batch_size=bs)
            for k, v in terms.items():
                per_term.setdefault(k, []).append(v.detach())
                named[f"{k}@{r}"] = v
        if total is None:
            total = self._touch_parameters()
        # "train/{teacher}/{feature,summary}": the mean over this step's partitions that carry the term
        self.log_dict({f"train/{k}": torch.stack(v).mean() for k, v in per_term.items()}, batch_size=1)
        self._guard_step(batch, total, named)
        self.log("train/stage", float(batch.stage), batch_size=1)
        if self._skip_update:  # a gradient-free stand-in keeps every rank's backward and DDP in step
            return self._touch_parameters()
        return total

    def _touch_parameters(self) -> Tensor:
        """A zero loss that reaches every trainable parameter (zero gradients)."""
        return sum((p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad),
                   torch.zeros((), device=self.device))

    def _guard_step(self, batch: TrainBatch, total: Tensor, terms: dict[str, Tensor]) -> None:
        """Global non-finite decision, data counts and bad-fraction check for this step (radio.train.guard)."""
        reduce = ((lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")) if self._trainer is not None
                  else (lambda t: t))
        verdict = self.guard.observe(self.global_step, total, terms, batch.reads, len(batch.faults), reduce)
        self._skip_update = verdict.skip
        self.log("train/loss", verdict.loss, prog_bar=True, batch_size=1)  # nan for a skipped step
        self.log_dict(self.guard.counters(), batch_size=1)
        # past data.max_bad_fraction: the step's own samples were good, it completes, then the run stops
        self._bad_data = self.guard.data_error(self.datamodule)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed this step's randomness from (seed, step, rank): a resumed run draws what the interrupted one did."""
        base = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        rank = self.trainer.global_rank if self._trainer is not None else 0
        seed = np.random.SeedSequence([base, self.global_step, rank, 0x57E9]).generate_state(1, dtype=np.uint32)
        torch.manual_seed(int(seed[0]))

    def on_before_optimizer_step(self, optimizer) -> None:
        """A skipped step: drop the gradients, so the optimizer changes nothing (no moments, no weight decay)."""
        if self._skip_update:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        bad_data, self._bad_data = self._bad_data, None
        stop_if_needed(self.trainer, self.guard, bad_data, lambda why: self.write_health_report(stopped=why))

    def write_health_report(self, stopped: str | None = None) -> Path | None:
        """Write `health.json` beside the logs (rank 0; call on every rank: the faults are gathered)."""
        health = gather_health(getattr(self.datamodule, "health", None))
        report = health_report(self.guard, health, self.global_step, stopped)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return write_health_json(report, log_dir) if log_dir and self.trainer.is_global_zero else None

    def on_train_end(self) -> None:
        self.write_health_report()

    # -- validation (radio.train.validation) -----------------------------------------------------------------
    def on_validation_start(self) -> None:
        self._teachers_to_device()
        self.validation.start(self)

    def validation_step(self, batch: ImageBatch, batch_idx: int) -> None:
        self.validation.step(self, batch.image)

    def on_validation_epoch_end(self) -> None:
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        writes = log_dir and self.trainer.is_global_zero and not self.trainer.sanity_checking
        self.validation.end(self, log_dir if writes else None)

    # -- optimisation and checkpoints ------------------------------------------------------------------------
    def configure_optimizers(self):
        return build_optimizer(self.model, self.optim_cfg, total_steps(self._trainer))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["radio_model_config"] = self.model.config.to_dict()
        checkpoint["radio_teacher_specs"] = to_plain([e.spec() for e in self.entries])
        checkpoint["radio_fidelity_history"] = self.validation.history.records
        checkpoint["radio_guard"] = self.guard.state_dict()
        normalizers = cast("Mapping[str, Normalizer]", self.model.normalizers)
        store_global_statistics(normalizers, checkpoint["state_dict"], NORMALIZERS)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.validation.history.records = list(checkpoint.get("radio_fidelity_history", []))
        self.guard.load_state_dict(checkpoint.get("radio_guard", {}))
        if self._trainer is not None and self.trainer.state.fn == "fit":
            use_recipe_lr(checkpoint, self.optim_cfg.lr)
        rank = self.trainer.global_rank if self._trainer is not None else 0
        if rank != 0:  # rank 0 carries the checkpoint's global statistics on, the others restart from zero
            normalizers = cast("Mapping[str, Normalizer]", self.model.normalizers)
            restart_statistics(normalizers, checkpoint.get("state_dict", {}), NORMALIZERS)
