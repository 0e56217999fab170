"""Teacher targets for one partition: the teacher at its own resolution, or through a mosaic.

A dynamic-resolution teacher runs at the student's grid times its own patch size, so both grids agree; a
fixed-size teacher runs at its canvas, either on each image resized to the canvas (grids are matched later by
interpolation) or, with `mosaic=True` and room for at least two tiles, on a k x k mosaic (radio.mosaic): exact
grids, k^2 fewer forwards, and no summary target. A teacher read from the feature cache (radio.cache)
does not run: its batch's cached crops are resized to the grid it would have given online (`cached_targets`).
"""
from __future__ import annotations

from typing import NamedTuple, cast

import torch
from torch import Tensor

from radio.cache.views import CachedTargets
from radio.data.transforms import resize_grid, resize_images
from radio.losses import summary_cosine_loss
from radio.mosaic import MosaicPlan, mosaic_features, plan_mosaic
from teachers.base import Teacher


class Targets(NamedTuple):
    """summary: (B, C_s) or None (no summary teacher, or a mosaic); features: (B, C, h, w) raw teacher features;
    mosaic: whether they came from a mosaic; summary_valid: (B,) bool, the samples whose summary target holds
    (None: all of them)."""

    summary: Tensor | None
    features: Tensor
    mosaic: bool
    summary_valid: Tensor | None = None


def mosaic_plan(teacher: Teacher, grid: tuple[int, int]) -> MosaicPlan | None:
    """The mosaic for a fixed-canvas teacher on a student grid, or None (dynamic teacher or under two tiles)."""
    if teacher.dynamic_resolution:
        return None
    return plan_mosaic(grid, teacher.patch_size, (teacher.input_size, teacher.input_size))


def teacher_targets(teacher: Teacher, images: Tensor, grid: tuple[int, int], mosaic: bool = False) -> Targets:
    """Run `teacher` for student images (B, 3, H, W) in [0, 1] whose patch grid is `grid`."""
    plan = mosaic_plan(teacher, grid) if mosaic else None
    if plan is not None:
        feats = mosaic_features(lambda x: teacher(x).features, images, plan, teacher.mean)
        return Targets(None, feats, True)
    out = teacher(resize_images(images, teacher.resolution_for(grid)))
    return Targets(out.summary, out.features, False)


def online_grid(teacher: Teacher, grid: tuple[int, int]) -> tuple[int, int]:
    """The feature grid `teacher_targets` gets without a mosaic for a student grid: a dynamic teacher's equals
    the student's; a fixed-size teacher's is its own (floor(input size / patch))."""
    if teacher.dynamic_resolution:
        return cast("tuple[int, int]", tuple(grid))
    return teacher.feature_grid(teacher.input_size, teacher.input_size)


def cached_targets(cached: CachedTargets, teacher: Teacher, grid: tuple[int, int]) -> Targets:
    """Targets from a partition's cached crops: each (C, h_i, w_i) crop resized (`resize_grid`) to the grid the
    teacher would give online for the student images (`online_grid`), stacked -> (B, C, h, w)."""
    size = online_grid(teacher, grid)
    feats = torch.stack([resize_grid(f[None].float(), size)[0] for f in cached.features])
    summary = cached.summary.float() if cached.summary is not None else None
    return Targets(summary, feats, False, cached.summary_valid if summary is not None else None)


def summary_target_loss(pred: Tensor | None, target: Targets) -> Tensor | None:
    """1 - cos between predicted (B, C_s) and target summaries over the samples whose target holds
    (`summary_valid`); None when there is no prediction, no target or no such sample."""
    if pred is None or target.summary is None:
        return None
    valid = target.summary_valid
    if valid is None or bool(valid.all()):
        return summary_cosine_loss(pred, target.summary)
    if not bool(valid.any()):
        return None
    return summary_cosine_loss(pred[valid], target.summary[valid])
