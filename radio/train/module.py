"""The distillation system as a LightningModule.

Per training step, for every partition of the batch (one batch per resolution, radio.data.schedule): the frozen
teachers of that partition give targets (directly, or through a mosaic, radio.train.targets); during the first
`normalization.estimate_steps` steps their features also feed the normalizers' statistics (refitted at power-of-
two steps, then frozen); the student runs once per partition; per teacher, its adaptor's outputs are compared
with the normalized targets after grid matching; per-teacher and per-partition weighted losses are summed into
one optimizer step. Validation measures fidelity and cos-error per teacher at several resolutions
(radio.train.fidelity) and writes fidelity.json / fidelity.png beside the logs.

References: AM-RADIO (Ranzinger et al., CVPR 2024); PHI-S (Ranzinger et al., 2024); RADIOv2.5 (Heinrich et al.,
2024).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor

import teachers as teacher_lib
from radio.data.cached import check_against_teachers
from radio.losses import LossConfig, feature_loss, match_grids, summary_cosine_loss, tokens_to_grid
from radio.model import AdaptorConfig, ModelConfig, RADIOModel, StudentConfig, TeacherHead
from radio.train.config import NormalizationConfig, OptimConfig, TeacherEntry, ValidationConfig, coerce, to_plain
from radio.train.fidelity import FidelityHistory, FidelityMetric
from radio.train.optim import build_optimizer
from radio.train.targets import (Targets, cached_targets, mosaic_plan, resize_grid, resize_images,
                                 summary_target_loss, teacher_targets)

# Kept importable from here (older code imported it from the module).
__all__ = ["DistillModule", "resize_images"]


def _is_refit_step(step: int) -> bool:
    """Refit the normalizers after steps 1, 2, 4, 8, ... (1-based), so early targets settle quickly."""
    n = step + 1
    return n & (n - 1) == 0


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
    """

    def __init__(self, student: StudentConfig, teachers: list[TeacherEntry], loss: LossConfig = LossConfig(),
                 optimizer: OptimConfig = OptimConfig(), adaptor: AdaptorConfig = AdaptorConfig(),
                 normalization: NormalizationConfig = NormalizationConfig(),
                 validation: ValidationConfig = ValidationConfig()) -> None:
        super().__init__()
        student = coerce(StudentConfig, student, "model.student")
        entries = [coerce(TeacherEntry, t, f"model.teachers[{i}]") for i, t in enumerate(teachers)]
        if not entries:
            raise ValueError("model.teachers: at least one teacher is needed")
        names = [e.name for e in entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model.teachers: name(s) {dup} appear more than once")
        self.loss_cfg = coerce(LossConfig, loss, "model.loss")
        self.optim_cfg = coerce(OptimConfig, optimizer, "model.optimizer")
        self.norm_cfg = coerce(NormalizationConfig, normalization, "model.normalization")
        self.val_cfg = coerce(ValidationConfig, validation, "model.validation")
        if self.norm_cfg.estimate_steps < 1:
            raise ValueError(f"model.normalization.estimate_steps: must be >= 1, got {self.norm_cfg.estimate_steps}")
        adaptor = coerce(AdaptorConfig, adaptor, "model.adaptor")
        self.entries = entries
        self.entry = {e.name: e for e in entries}
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"student": to_plain(student), "teachers": to_plain(entries),
                                   "loss": to_plain(self.loss_cfg), "optimizer": to_plain(self.optim_cfg),
                                   "adaptor": to_plain(adaptor), "normalization": to_plain(self.norm_cfg),
                                   "validation": to_plain(self.val_cfg)})
        # Teachers are deliberately not submodules: never in the optimizer, the state dict or checkpoints.
        self._teachers = {e.name: teacher_lib.build(e.spec()) for e in entries}
        heads = [TeacherHead(e.name, t.summary_dim or None, t.feature_dim, t.patch_size, e.normalizer)
                 for e, t in zip(entries, self._teachers.values())]
        self.model = RADIOModel(ModelConfig(student=student, teachers=heads, adaptor=adaptor))
        self.fidelity_history = FidelityHistory()
        self._metrics: dict[tuple[str, int], FidelityMetric] = {}
        self._val_resolutions: list[int] = []
        self._skip_validation = False

    # -- teachers --------------------------------------------------------------------------------------------
    @property
    def teachers(self) -> dict[str, teacher_lib.Teacher]:
        return self._teachers

    @property
    def patch_size(self) -> int:
        return self.model.resolution_step

    def _teachers_to_device(self) -> None:
        for t in self._teachers.values():
            if t._mean.device != self.device:
                t.to(self.device)

    def _schedule(self):
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(dm, "schedule", None)

    def on_fit_start(self) -> None:
        self._teachers_to_device()
        schedule = self._schedule()
        if schedule is not None:
            self.check_schedule(schedule)
        dm = self.trainer.datamodule
        if getattr(dm, "cache_layout", None) is not None:  # training reads some teachers from a feature cache
            grid = (dm.resolution // self.patch_size,) * 2
            check_against_teachers(dm.cache_layout, self._teachers, {e.name: e.spec() for e in self.entries},
                                   {e.name: e.mosaic for e in self.entries}, grid)

    def check_schedule(self, schedule) -> None:
        """Fail if a summary teacher would only ever see mosaics (its summary head would never train)."""
        for i, e in enumerate(self.entries):
            t = self._teachers[e.name]
            if not (e.mosaic and t.has_summary):
                continue
            plain = [p for s in schedule.stages for p in s.partitions
                     if (p.teachers is None or e.name in p.teachers)
                     and mosaic_plan(t, (p.resolution // self.patch_size,) * 2) is None]
            if not plain:
                raise ValueError(f"model.teachers[{i}] ({e.name}): mosaic is on and every partition it supervises "
                                 "fits a mosaic, so its summary head would never be trained; add a partition where "
                                 "it runs directly (e.g. a higher resolution) or set mosaic: false")

    # -- targets and normalizers -----------------------------------------------------------------------------
    @staticmethod
    def _partitions(batch: dict[str, Any]) -> list[dict[str, Any]]:
        if "partitions" in batch:
            return batch["partitions"]
        return [{"image": batch["image"], "teachers": None, "weight": 1.0,
                 "resolution": int(batch["image"].shape[-1])}]

    def _grid(self, images: Tensor) -> tuple[int, int]:
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size

    def partition_targets(self, part: dict[str, Any], mosaic: bool = True) -> dict[str, Targets]:
        names = part.get("teachers") or [e.name for e in self.entries]
        grid = self._grid(part["image"])
        cached = part.get("cached") or {}  # teachers read from the feature cache do not run
        return {n: cached_targets(cached[n], self._teachers[n], grid) if n in cached else
                teacher_targets(self._teachers[n], part["image"], grid, mosaic=mosaic and self.entry[n].mosaic)
                for n in names}

    @torch.no_grad()
    def observe_targets(self, targets: list[dict[str, Targets]], step: int) -> None:
        """Stream this step's raw teacher features into the normalizers still estimating; fit or freeze them."""
        for name, norm in self.model.normalizers.items():
            if not norm.needs_statistics:
                continue
            feats = [t[name].features for t in targets if name in t]
            if not feats:
                continue
            for f in feats:
                norm.update(f.permute(0, 2, 3, 1))
            if step + 1 >= self.norm_cfg.estimate_steps:
                norm.freeze()
            elif _is_refit_step(step) or not norm.ready:
                norm.fit()

    def _normalized(self, name: str, features: Tensor) -> Tensor:
        """(B, C, h, w) raw teacher features -> normalized, same layout."""
        return self.model.normalizers[name](features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    # -- losses ----------------------------------------------------------------------------------------------
    def partition_losses(self, images: Tensor, targets: dict[str, Targets]) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted loss of one partition and its per-teacher terms ("{teacher}/feature", "{teacher}/summary")."""
        tokens = self.model.forward_tokens(images)
        total = images.new_zeros(())
        terms: dict[str, Tensor] = {}
        for name, tg in targets.items():
            e = self.entry[name]
            pred = self.model.adapt(name, tokens, normalized=True)
            pfeat, tfeat = match_grids(tokens_to_grid(pred.features, tokens.grid), self._normalized(name, tg.features))
            f_loss = feature_loss(pfeat, tfeat, self.loss_cfg)
            terms[f"{name}/feature"] = f_loss
            total = total + e.feature_weight * f_loss
            s_loss = summary_target_loss(pred.summary, tg)
            if s_loss is not None:
                terms[f"{name}/summary"] = s_loss
                total = total + e.summary_weight * s_loss
            elif pred.summary is not None:  # mosaic or cached crops: no summary target; keep the head in the graph
                total = total + 0.0 * pred.summary.sum()
        return total, terms

    def distill_losses(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and terms of one batch of images in [0, 1] against every teacher (no mosaic, no statistics)."""
        return self.partition_losses(images, self.partition_targets({"image": images}, mosaic=False))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._teachers_to_device()
        parts = self._partitions(batch)
        targets = [self.partition_targets(p) for p in parts]
        self.observe_targets(targets, self.global_step)
        total = parts[0]["image"].new_zeros(())
        per_term: dict[str, list[Tensor]] = {}
        for p, tg in zip(parts, targets):
            loss, terms = self.partition_losses(p["image"], tg)
            total = total + p["weight"] * loss
            bs, r = p["image"].shape[0], p["image"].shape[-1]
            self.log_dict({f"train/{k}@{r}": v for k, v in terms.items()}, batch_size=bs)
            for k, v in terms.items():
                per_term.setdefault(k, []).append(v.detach())
        # "train/{teacher}/{feature,summary}": the mean over this step's partitions that carry the term
        self.log_dict({f"train/{k}": torch.stack(v).mean() for k, v in per_term.items()}, batch_size=1)
        self.log("train/loss", total, prog_bar=True, batch_size=parts[0]["image"].shape[0])
        if "stage" in batch:
            self.log("train/stage", float(batch["stage"]), batch_size=1)
        return total

    # -- validation ------------------------------------------------------------------------------------------
    def _primary_resolution(self, fallback: int) -> int:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(dm, "resolution", fallback))

    def validation_resolutions(self, fallback: int) -> list[int]:
        if self.val_cfg.resolutions:
            res = list(self.val_cfg.resolutions)
        else:
            schedule = self._schedule()
            res = schedule.resolutions() if schedule is not None else [fallback]
        return sorted(set(res) | {self._primary_resolution(fallback)})

    def on_validation_start(self) -> None:
        self._teachers_to_device()
        unfitted = [n for n, m in self.model.normalizers.items() if not m.ready]
        self._skip_validation = bool(unfitted)
        if unfitted:
            warnings.warn(f"validation skipped: the normalizers of {unfitted} have no statistics yet (they are "
                          "estimated during training)", stacklevel=1)
        self._metrics = {}
        self._val_resolutions = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self._skip_validation:
            return
        images = batch["image"]
        if not self._val_resolutions:
            self._val_resolutions = self.validation_resolutions(images.shape[-1])
        primary = self._primary_resolution(images.shape[-1])
        for r in self._val_resolutions:
            x = resize_images(images, (r, r))
            tokens = self.model.forward_tokens(x)
            total = x.new_zeros(())
            for e in self.entries:
                tg = teacher_targets(self._teachers[e.name], x, tokens.grid, mosaic=False)
                pred = self.model.adapt(e.name, tokens, normalized=True)
                pgrid = tokens_to_grid(pred.features, tokens.grid)
                if r == primary:
                    pf, tf = match_grids(pgrid, self._normalized(e.name, tg.features))
                    f_loss = feature_loss(pf, tf, self.loss_cfg)
                    self.log(f"val/{e.name}/feature", f_loss, batch_size=x.shape[0])
                    total = total + e.feature_weight * f_loss
                    if pred.summary is not None and tg.summary is not None:
                        s_loss = summary_cosine_loss(pred.summary, tg.summary)
                        self.log(f"val/{e.name}/summary", s_loss, batch_size=x.shape[0])
                        total = total + e.summary_weight * s_loss
                praw = self.model.normalizers[e.name].inverse(pred.features)
                key = (e.name, r)
                if key not in self._metrics:
                    self._metrics[key] = FidelityMetric(tg.features.shape[1]).to(self.device)
                self._metrics[key].update(tokens_to_grid(praw, tokens.grid), resize_grid(tg.features, tokens.grid),
                                          pred.summary, tg.summary)
            if r == primary:
                self.log("val/loss", total, prog_bar=True, batch_size=x.shape[0])

    def on_validation_epoch_end(self) -> None:
        if self._skip_validation or not self._metrics:
            return
        primary = self._primary_resolution(max(self._val_resolutions))
        values: dict[str, dict[int, dict[str, float]]] = {}
        for (name, r), metric in sorted(self._metrics.items()):
            out = {k: float(v) for k, v in metric.compute().items()}
            values.setdefault(name, {})[r] = out
            for k, v in out.items():
                self.log(f"val/{name}/{k}@{r}", v)
                if r == primary:
                    self.log(f"val/{name}/{k}", v)
        self._metrics = {}
        self.fidelity_history.add(self.global_step, values)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        if log_dir and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self.fidelity_history.write(log_dir)

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        return build_optimizer(self.model, self.optim_cfg, self._total_steps())

    def _total_steps(self) -> int:
        trainer: Optional[L.Trainer] = getattr(self, "_trainer", None)
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        if trainer is not None:
            est = trainer.estimated_stepping_batches
            if math.isfinite(est):
                return int(est)
        return 10_000

    # -- checkpoints -----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["radio_model_config"] = self.model.config.to_dict()
        checkpoint["radio_teacher_specs"] = to_plain([e.spec() for e in self.entries])
        checkpoint["radio_fidelity_history"] = self.fidelity_history.records
