"""Typed outputs shared across the framework, and the one check of what an image tensor may hold.

Shapes use B = batch, C = channels, N = tokens, h x w = patch grid.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def float_images(x: Tensor, who: str = "model") -> Tensor:
    """Images as floats in [0, 1], for every model that takes images (teachers and students alike).

    A floating-point tensor is returned as it is (it is taken to be in [0, 1]); uint8 is read as 0-255 pixels and
    divided by 255 (float32); any other dtype (other integers, bool, complex) is an error, since its scale cannot
    be told.
    """
    if x.is_floating_point():
        return x
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    raise TypeError(f"{who}: images must be floating point in [0, 1] or uint8 in [0, 255], got dtype {x.dtype}; "
                    f"convert them first (e.g. x.float() / 255 for 0-255 pixels)")


class StudentOutput(NamedTuple):
    """Backbone output of the student.

    summary: (B, C_summary), the concatenation of the per-teacher summary (CLS) tokens.
    features: (B, N, C) patch tokens, or (B, C, h, w) when `feature_fmt="NCHW"` was asked for.
    """

    summary: Tensor
    features: Tensor


class AdaptorOutput(NamedTuple):
    """One adaptor's output in its teacher's space.

    summary: (B, C_teacher_summary), or None for a teacher without a summary target (e.g. SAM).
    features: (B, N, C_teacher) or (B, C_teacher, h, w) with `feature_fmt="NCHW"`.
    """

    summary: Tensor | None
    features: Tensor


class IntermediatesOutput(NamedTuple):
    """Backbone outputs after selected blocks (`RADIOModel.forward_intermediates`).

    intermediates: one StudentOutput per selected block, in block order; its summary (B, C_summary) is that
        block's summary tokens concatenated, its features (B, N, C) or (B, C, h, w) that block's patch tokens.
    indices: the selected block indices (non-negative, ascending), one per entry of `intermediates`.
    final: the StudentOutput of the last block (what `model(x)` returns), or None when `stop_early` was asked.
    """

    intermediates: list[StudentOutput]
    indices: list[int]
    final: StudentOutput | None
