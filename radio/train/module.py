"""The distillation system as a LightningModule.

Frozen teachers (built through the `teachers` registry) give targets; the RADIOModel student runs once per
batch; per teacher, its adaptor's summary and feature outputs are compared with the (normalized) teacher
targets after grid matching; weighted losses are summed into one optimizer step.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

import teachers as teacher_lib
from radio.losses import LossConfig, feature_loss, fidelity, match_grids, summary_cosine_loss, tokens_to_grid
from radio.model import AdaptorConfig, ModelConfig, RADIOModel, StudentConfig, TeacherHead
from radio.train.config import OptimConfig, TeacherEntry, coerce, to_plain


def resize_images(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


class DistillModule(L.LightningModule):
    """Multi-teacher distillation into one student.

    Args:
        student: the student's architecture.
        teachers: the teachers, their loss weights and normalizers.
        loss: loss choices.
        optimizer: AdamW + warm-up/cosine schedule.
        adaptor: adaptor MLP shape.
    """

    def __init__(self, student: StudentConfig, teachers: list[TeacherEntry], loss: LossConfig = LossConfig(),
                 optimizer: OptimConfig = OptimConfig(), adaptor: AdaptorConfig = AdaptorConfig()) -> None:
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
        adaptor = coerce(AdaptorConfig, adaptor, "model.adaptor")
        self.entries = entries
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"student": to_plain(student), "teachers": to_plain(entries),
                                   "loss": to_plain(self.loss_cfg), "optimizer": to_plain(self.optim_cfg),
                                   "adaptor": to_plain(adaptor)})
        # Teachers are deliberately not submodules: never in the optimizer, the state dict or checkpoints.
        self._teachers = {e.name: teacher_lib.build(e.spec()) for e in entries}
        heads = [TeacherHead(e.name, t.summary_dim or None, t.feature_dim, t.patch_size, e.normalizer)
                 for e, t in zip(entries, self._teachers.values())]
        self.model = RADIOModel(ModelConfig(student=student, teachers=heads, adaptor=adaptor))

    # -- teachers --------------------------------------------------------------------------------------------
    @property
    def teachers(self) -> dict[str, teacher_lib.Teacher]:
        return self._teachers

    def _teachers_to_device(self) -> None:
        for t in self._teachers.values():
            if t._mean.device != self.device:
                t.to(self.device)

    def on_fit_start(self) -> None:
        self._teachers_to_device()

    def on_validation_start(self) -> None:
        self._teachers_to_device()

    def teacher_targets(self, name: str, images: Tensor, grid: tuple[int, int]):
        teacher = self._teachers[name]
        return teacher(resize_images(images, teacher.resolution_for(grid)))

    # -- losses ----------------------------------------------------------------------------------------------
    def distill_losses(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted total loss and per-teacher terms for a batch of images in [0, 1]."""
        tokens = self.model.forward_tokens(images)
        total = images.new_zeros(())
        terms: dict[str, Tensor] = {}
        for e in self.entries:
            target = self.teacher_targets(e.name, images, tokens.grid)
            norm = self.model.normalizers[e.name]
            tfeat = norm(target.features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            pred = self.model.adapt(e.name, tokens, normalized=True)
            pfeat, tfeat = match_grids(tokens_to_grid(pred.features, tokens.grid), tfeat)
            f_loss = feature_loss(pfeat, tfeat, self.loss_cfg)
            terms[f"{e.name}/feature"] = f_loss
            total = total + e.feature_weight * f_loss
            if pred.summary is not None and target.summary is not None:
                s_loss = summary_cosine_loss(pred.summary, target.summary)
                terms[f"{e.name}/summary"] = s_loss
                total = total + e.summary_weight * s_loss
            if not self.training:
                terms[f"{e.name}/fidelity"] = fidelity(pfeat, tfeat)
        return total, terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._teachers_to_device()
        loss, terms = self.distill_losses(batch["image"])
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, terms = self.distill_losses(batch["image"])
        bs = batch["image"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=bs)

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or name.endswith(("reg_token", "pos_embed")) else decay).append(p)
        cfg = self.optim_cfg
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas))
        total = self._total_steps()

        def lr_lambda(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / max(1, cfg.warmup_steps)
            t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

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
