"""Cropped position embedding (CPE).

One learned position grid covers the largest supported input (e.g. 2048 px / patch 16 = 128 x 128). During
training every sample sees a random crop of that grid (random scale and aspect), resampled onto its own patch
grid, and with a small probability no position embedding at all. At inference the grid is resized to the larger
side of the input and the top-left window is used, so the same image always gets the same embedding.

References: AM-RADIO (Ranzinger et al., CVPR 2024), section on "Cropped Position Embedding"; RADIOv2.5.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_crop_windows(batch: int, *, min_scale: float, max_aspect: float,
                        generator: torch.Generator | None = None, device=None) -> Tensor:
    """Draw one crop window per sample, in units of the full grid.

    s ~ U(min_scale, 1); a = exp(U(log(1/max_aspect), log(max_aspect))); sx = s * a and sy = s / a, clamped to
    [0, 1]; offsets ox ~ U(0, 1 - sx), oy ~ U(0, 1 - sy).

    Returns:
        (B, 4) tensor of (ox, oy, sx, sy).
    """
    u = torch.rand(batch, 4, generator=generator, device=device)
    s = min_scale + (1.0 - min_scale) * u[:, 0]
    log_a = math.log(max_aspect) * (2.0 * u[:, 1] - 1.0)
    a = torch.exp(log_a)
    sx = (s * a).clamp(0.0, 1.0)
    sy = (s / a).clamp(0.0, 1.0)
    ox = (1.0 - sx) * u[:, 2]
    oy = (1.0 - sy) * u[:, 3]
    return torch.stack([ox, oy, sx, sy], dim=1)


def window_sampling_grid(windows: Tensor, h: int, w: int) -> Tensor:
    """Sampling grid for `F.grid_sample` (align_corners=False) that maps each window onto an h x w grid.

    Args:
        windows: (B, 4) of (ox, oy, sx, sy) in [0, 1] units of the source grid.
    Returns:
        (B, h, w, 2) grid of (x, y) in [-1, 1].
    """
    device, dtype = windows.device, windows.dtype
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h  # cell centres in [0, 1]
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    ox, oy, sx, sy = (windows[:, i].view(-1, 1) for i in range(4))
    gx = (ox + sx * xs.view(1, -1)) * 2.0 - 1.0  # (B, w)
    gy = (oy + sy * ys.view(1, -1)) * 2.0 - 1.0  # (B, h)
    grid_x = gx[:, None, :].expand(-1, h, -1)
    grid_y = gy[:, :, None].expand(-1, -1, w)
    return torch.stack([grid_x, grid_y], dim=-1)


class CroppedPosEmbed(nn.Module):
    """Learned position grid with random crops in training and a fixed top-left window at inference.

    Args:
        dim: embedding width C.
        max_grid: side of the learned grid in patches (max resolution / patch size).
        drop_prob: probability that a training sample gets no position embedding.
        min_scale: lower bound of the crop scale (sqrt(0.1) in RADIO).
        max_aspect: crop aspect ratio range is [1/max_aspect, max_aspect].
    """

    def __init__(self, dim: int, max_grid: int, drop_prob: float = 0.1, min_scale: float = math.sqrt(0.1),
                 max_aspect: float = 4.0 / 3.0) -> None:
        super().__init__()
        if max_grid < 1:
            raise ValueError(f"max_grid must be >= 1, got {max_grid}")
        self.max_grid = max_grid
        self.drop_prob = drop_prob
        self.min_scale = min_scale
        self.max_aspect = max_aspect
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, max_grid, max_grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def inference_window(self, h: int, w: int) -> Tensor:
        """(1, C, h, w): the grid resized to max(h, w) squared, top-left h x w window."""
        side = max(h, w)
        pe: Tensor = self.pos_embed
        if side != self.max_grid:
            pe = F.interpolate(pe.float(), size=(side, side), mode="bilinear", align_corners=False,
                               antialias=side < self.max_grid).to(pe.dtype)
        return pe[:, :, :h, :w]

    def forward(self, batch: int, h: int, w: int) -> Tensor:
        """Position embedding for a (batch, h, w) patch grid.

        Returns:
            (B, h*w, C) in training, (1, h*w, C) at inference.
        """
        if max(h, w) > self.max_grid:
            raise ValueError(f"patch grid {h}x{w} exceeds the position grid {self.max_grid}x{self.max_grid}; "
                             "raise the student's max_resolution")
        if not self.training:
            pe = self.inference_window(h, w)
            return pe.flatten(2).transpose(1, 2)
        windows = sample_crop_windows(batch, min_scale=self.min_scale, max_aspect=self.max_aspect,
                                      device=self.pos_embed.device)
        grid = window_sampling_grid(windows, h, w).to(self.pos_embed.dtype)
        pe = F.grid_sample(self.pos_embed.expand(batch, -1, -1, -1), grid, mode="bilinear",
                           padding_mode="border", align_corners=False)
        if self.drop_prob > 0:
            keep = (torch.rand(batch, 1, 1, 1, device=pe.device) >= self.drop_prob).to(pe.dtype)
            pe = pe * keep
        return pe.flatten(2).transpose(1, 2)
