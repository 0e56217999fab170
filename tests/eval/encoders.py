"""Test-only encoders (never teachers): one whose features carry the synth labels by construction, one of noise.

`PaletteEncoder` looks at each pixel's nearest synth palette colour (radio.data.synth.COLOURS; low-saturation
pixels count as background): patch features are the per-patch histograms of those classes, lifted by a fixed
random projection; the summary is the image's histogram of object colours plus the object pixels' centroid. So
colour, position and the colour-class masks are in the features; shape is not.
`NoiseEncoder` returns features that do not depend on the image at all.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eval.features import Encoder
from radio.data.synth import COLOURS

PALETTE = torch.tensor(list(COLOURS.values()))  # (K, 3)


def palette_classes(images: Tensor, min_saturation: float = 0.35) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W) int64: 0 = background, 1 + nearest palette colour otherwise."""
    sat = images.amax(1) - images.amin(1)
    d = ((images[:, None] - PALETTE[None, :, :, None, None]) ** 2).sum(2)  # (B, K, H, W)
    return torch.where(sat > min_saturation, d.argmin(1) + 1, torch.zeros_like(sat, dtype=torch.long))


class PaletteEncoder(Encoder):
    """Test-only encoder whose features carry the synth colour/position labels by construction (not a teacher)."""

    name = "palette-test-encoder"
    kind = "test"

    def __init__(self, patch: int = 8, dim: int = 32, seed: int = 0) -> None:
        self.patch = patch
        g = torch.Generator().manual_seed(seed)
        self.lift = torch.randn(len(COLOURS) + 1, dim, generator=g)

    def input_size(self, requested: int) -> int:
        return max(self.patch, requested // self.patch * self.patch)

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        cls = palette_classes(images.float())
        onehot = F.one_hot(cls, len(COLOURS) + 1).permute(0, 3, 1, 2).float()  # (B, K+1, H, W)
        hist = F.avg_pool2d(onehot, self.patch)  # (B, K+1, h, w)
        feats = torch.einsum("bkhw,kd->bdhw", hist, self.lift)
        obj = (cls > 0).float()
        n = obj.sum((1, 2)).clamp_min(1)
        h, w = obj.shape[-2:]
        ys = torch.linspace(-1, 1, h)[None, :, None]
        xs = torch.linspace(-1, 1, w)[None, None, :]
        centroid = torch.stack([(obj * ys).sum((1, 2)) / n, (obj * xs).sum((1, 2)) / n], 1)
        colour_share = onehot[:, 1:].mean((2, 3))
        colour_share = colour_share / colour_share.sum(1, keepdim=True).clamp_min(1e-6)
        return torch.cat([colour_share, 2 * centroid], 1), feats

    def to(self, device) -> PaletteEncoder:
        return self


class NoiseEncoder(Encoder):
    """Test-only encoder of pure noise: features independent of the image (not a teacher)."""

    name = "noise-test-encoder"
    kind = "test"

    def __init__(self, patch: int = 8, dim: int = 32, seed: int = 0) -> None:
        self.patch, self.dim = patch, dim
        self.gen = torch.Generator().manual_seed(seed)

    def input_size(self, requested: int) -> int:
        return max(self.patch, requested // self.patch * self.patch)

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        b, _, hh, ww = images.shape
        feats = torch.randn(b, self.dim, hh // self.patch, ww // self.patch, generator=self.gen)
        return feats.mean((2, 3)) + torch.randn(b, self.dim, generator=self.gen), feats

    def to(self, device) -> NoiseEncoder:
        return self
