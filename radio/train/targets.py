"""Teacher targets for one partition: the teacher at its own resolution, or through a mosaic.

A dynamic-resolution teacher runs at the student's grid times its own patch size, so both grids agree; a
fixed-size teacher runs at its canvas, either on each image resized to the canvas (grids are matched later by
interpolation) or, with `mosaic=True` and room for at least two tiles, on a k x k mosaic (radio.mosaic): exact
grids, k^2 fewer forwards, and no summary target.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch.nn.functional as F
from torch import Tensor

from radio.mosaic import MosaicPlan, mosaic_features, plan_mosaic
from teachers.base import Teacher


class Targets(NamedTuple):
    """summary: (B, C_s) or None (no summary teacher, or a mosaic); features: (B, C, h, w) raw teacher features;
    mosaic: whether they came from a mosaic."""

    summary: Optional[Tensor]
    features: Tensor
    mosaic: bool


def resize_images(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of (B, 3, H, W) images in [0, 1]; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def resize_grid(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bilinear resize of a (B, C, h, w) feature grid (antialiased when shrinking); a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    shrink = grid[0] < x.shape[-2] or grid[1] < x.shape[-1]
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False, antialias=shrink)


def mosaic_plan(teacher: Teacher, grid: tuple[int, int]) -> Optional[MosaicPlan]:
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
