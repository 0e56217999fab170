"""Normalizers of teacher features: fitted on streamed statistics, then frozen; exact inverse.

The loss compares the adaptor's output with the *normalized* teacher features; at inference the adaptor's output
is mapped back to the teacher's space through `inverse`. Statistics are buffers, so they live in checkpoints and
in exports.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from radio.registry import Registry

NORMALIZERS: Registry[type["Normalizer"]] = Registry("normalizer")


class Normalizer(nn.Module):
    """Base class. Features are (..., C) with channels last.

    Subclasses implement `update` (stream statistics), `fit` (freeze a transform), `forward` and `inverse`.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:  # noqa: ARG002 - identity keeps no statistics
        return None

    @torch.no_grad()
    def fit(self) -> None:
        self.fitted.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def inverse(self, y: Tensor) -> Tensor:
        return y


@NORMALIZERS.register("none")
class IdentityNormalizer(Normalizer):
    """No normalization: targets are the raw teacher features."""


def build_normalizer(kind: str, dim: int) -> Normalizer:
    return NORMALIZERS.get(kind)(dim)
