"""The distillation objective: per partition, the teachers' targets and the student's weighted loss.

For a partition (radio.data.batch.Partition), each teacher that supervises it gives targets (run online,
directly or through a mosaic, or read from the feature cache: radio.train.targets); during the first
`normalization.estimate_steps` steps their raw features also stream into the normalizers still estimating
(refitted at power-of-two steps, then frozen). The loss of the student's tokens against the targets: per
teacher, its adaptor's feature grid against the normalized target grid after grid matching (`feature_loss`)
and its summary against the target summary (1 - cos, over the samples whose summary target holds), weighted
by the teacher's `feature_weight` and `summary_weight`. Training and validation compute it with
`Objective.loss`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
from torch import Tensor, nn

from radio.data.batch import Partition
from radio.data.schedule import Schedule
from radio.losses import LossConfig, feature_loss, match_grids, tokens_to_grid
from radio.model import RADIOModel, StudentTokens
from radio.train.config import TeacherEntry
from radio.train.targets import Targets, cached_targets, mosaic_plan, summary_target_loss, teacher_targets
from radio.types import AdaptorOutput
from teachers.base import Teacher

if TYPE_CHECKING:
    from radio.normalize import Normalizer


def is_refit_step(step: int) -> bool:
    """Refit the normalizers after steps 1, 2, 4, 8, ... (1-based), so early targets settle quickly."""
    n = step + 1
    return n & (n - 1) == 0


class PartitionLoss(NamedTuple):
    """total: () the weighted loss; terms: its per-teacher terms ("{teacher}/feature", "{teacher}/summary");
    preds: per teacher, its adaptor's output in the normalized space (summary (B, C_s) or None, features
    (B, N, C))."""

    total: Tensor
    terms: dict[str, Tensor]
    preds: dict[str, AdaptorOutput]


class Objective:
    """Targets and losses of a student (RADIOModel: its adaptors and normalizers, passed to each call) and its
    teachers.

    Args:
        teachers: the frozen teachers by name.
        entries: the recipe's teachers (loss weights, mosaic use), in recipe order.
        loss: the loss choices.
        estimate_steps: the steps over which the normalizers estimate their statistics.
        patch_size: the student's patch size (pixels per grid cell).
    """

    def __init__(self, teachers: dict[str, Teacher], entries: list[TeacherEntry], loss: LossConfig,
                 estimate_steps: int, patch_size: int) -> None:
        self.teachers, self.loss_cfg = teachers, loss
        self.estimate_steps, self.patch_size = estimate_steps, patch_size
        self.entry = {e.name: e for e in entries}

    def check_schedule(self, schedule: Schedule) -> None:
        """Fail if a summary teacher would only ever see mosaics (its summary head would never train)."""
        for i, e in enumerate(self.entry.values()):
            t = self.teachers[e.name]
            if not (e.mosaic and t.has_summary):
                continue
            plain = [p for s in schedule.stages for p in s.partitions
                     if (p.teachers is None or e.name in p.teachers)
                     and mosaic_plan(t, (p.resolution // self.patch_size,) * 2) is None]
            if not plain:
                raise ValueError(f"model.teachers[{i}] ({e.name}): mosaic is on and every partition it supervises "
                                 "fits a mosaic, so its summary head would never be trained; add a partition where "
                                 "it runs directly (e.g. a higher resolution) or set mosaic: false")

    def targets(self, part: Partition, mosaic: bool = True) -> dict[str, Targets]:
        """The targets of every teacher that supervises `part` (recipe order; `mosaic=False`: no mosaic)."""
        names = part.teachers or list(self.entry)
        image = part.image
        grid = (image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)
        cached = part.cached  # teachers read from the feature cache do not run
        return {n: cached_targets(cached[n], self.teachers[n], grid) if n in cached else
                teacher_targets(self.teachers[n], image, grid, mosaic=mosaic and self.entry[n].mosaic)
                for n in names}

    @torch.no_grad()
    def observe(self, normalizers: nn.ModuleDict, targets: list[dict[str, Targets]], step: int,
                supervised: set[str] | None = None) -> None:
        """Stream this step's raw teacher features into the `normalizers` still estimating; fit or freeze
        them.

        `supervised`: the teachers of this step's partitions on every rank (fitting all-reduces, so a rank
        whose partitions came out empty still takes part); None means those with targets here.
        """
        for name, norm in cast("Mapping[str, Normalizer]", normalizers).items():
            if not norm.needs_statistics:
                continue
            feats = [t[name].features for t in targets if name in t]
            if not feats and (supervised is None or name not in supervised):
                continue
            for f in feats:
                norm.update(f.permute(0, 2, 3, 1))
            if step + 1 >= self.estimate_steps:
                norm.freeze()
            elif is_refit_step(step) or not norm.ready:
                norm.fit()

    @staticmethod
    def normalized(model: RADIOModel, name: str, features: Tensor) -> Tensor:
        """(B, C, h, w) raw features of teacher `name` -> normalized by `model`'s normalizer, same layout."""
        return model.normalizers[name](features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def loss(self, model: RADIOModel, tokens: StudentTokens, targets: dict[str, Targets]) -> PartitionLoss:
        """The weighted loss of the `model`'s tokens of one partition against its teachers' targets."""
        total = torch.zeros((), device=tokens.patches.device)
        terms: dict[str, Tensor] = {}
        preds: dict[str, AdaptorOutput] = {}
        for name, tg in targets.items():
            e = self.entry[name]
            pred = preds[name] = model.adapt(name, tokens, normalized=True)
            pfeat, tfeat = match_grids(tokens_to_grid(pred.features, tokens.grid),
                                       self.normalized(model, name, tg.features))
            f_loss = feature_loss(pfeat, tfeat, self.loss_cfg)
            terms[f"{name}/feature"] = f_loss
            total = total + e.feature_weight * f_loss
            s_loss = summary_target_loss(pred.summary, tg)
            if s_loss is not None:
                terms[f"{name}/summary"] = s_loss
                total = total + e.summary_weight * s_loss
            elif pred.summary is not None:  # mosaic or cached crops: no summary target; keep the head in the graph
                total = total + 0.0 * pred.summary.sum()
        return PartitionLoss(total, terms, preds)
