"""Distillation losses and grid matching: pure functions from tensors to tensors.

Summary: 1 - cos. Features (AM-RADIO): 0.9 (1 - cos) + 0.1 SmoothL1(beta=2). Features on PHI-S-normalized
targets (RADIOv2.5): MSE. Grid matching: when the student's and the teacher's feature grids differ, both are
bilinearly resized (align_corners=True) to the larger grid.

References: AM-RADIO (Ranzinger et al., CVPR 2024); PHI-S (Ranzinger et al., 2024); RADIOv2.5.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from radio.ranges import NON_NEGATIVE, fields_errors
from radio.registry import Registry

FEATURE_LOSSES: Registry[Callable[..., Tensor]] = Registry("feature loss")


@dataclass
class LossConfig:
    """Loss choices.

    Args:
        feature: "cos_smoothl1" (AM-RADIO) or "mse" (for normalized targets, RADIOv2.5).
        cos_weight: weight of (1 - cos) in cos_smoothl1.
        smooth_l1_weight: weight of the smooth-L1 term in cos_smoothl1.
        smooth_l1_beta: smooth-L1 beta.
    """

    feature: str = "cos_smoothl1"
    cos_weight: float = 0.9
    smooth_l1_weight: float = 0.1
    smooth_l1_beta: float = 2.0

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        """Range problems of the fields `values` (radio.schema): the weights and beta are >= 0."""
        return fields_errors(where, values, {"cos_weight": NON_NEGATIVE, "smooth_l1_weight": NON_NEGATIVE,
                                             "smooth_l1_beta": NON_NEGATIVE})


def summary_cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean of 1 - cos over the batch. pred, target: (B, C)."""
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


@FEATURE_LOSSES.register("cos_smoothl1")
def cos_smoothl1_loss(pred: Tensor, target: Tensor, cos_weight: float = 0.9, smooth_l1_weight: float = 0.1,
                      smooth_l1_beta: float = 2.0, **_: float) -> Tensor:
    """cos_weight * mean(1 - cos over C) + smooth_l1_weight * SmoothL1. pred, target: (B, C, h, w)."""
    pred, target = pred.float(), target.float()
    cos = 1.0 - F.cosine_similarity(pred, target, dim=1).mean()
    sl1 = F.smooth_l1_loss(pred, target, beta=smooth_l1_beta)
    return cos_weight * cos + smooth_l1_weight * sl1


@FEATURE_LOSSES.register("mse")
def mse_loss(pred: Tensor, target: Tensor, **_: float) -> Tensor:
    """Mean squared error. pred, target: (B, C, h, w)."""
    return F.mse_loss(pred.float(), target.float())


def feature_loss(pred: Tensor, target: Tensor, cfg: LossConfig) -> Tensor:
    fn = FEATURE_LOSSES.get(cfg.feature)
    return fn(pred, target, cos_weight=cfg.cos_weight, smooth_l1_weight=cfg.smooth_l1_weight,
              smooth_l1_beta=cfg.smooth_l1_beta)


def match_grids(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Resize the smaller of two (B, C, h, w) grids to the larger one (per axis), bilinear, align_corners=True."""
    hs, ws = student.shape[-2:]
    ht, wt = teacher.shape[-2:]
    size = (max(hs, ht), max(ws, wt))
    if (hs, ws) != size:
        student = F.interpolate(student, size=size, mode="bilinear", align_corners=True)
    if (ht, wt) != size:
        teacher = F.interpolate(teacher, size=size, mode="bilinear", align_corners=True)
    return student, teacher


def tokens_to_grid(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N, C) -> (B, C, h, w)."""
    b, n, c = tokens.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} tokens do not form a {grid[0]}x{grid[1]} grid")
    return tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])

