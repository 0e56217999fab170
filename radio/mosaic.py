"""Mosaic: run a fixed-canvas (high-resolution) teacher once on k_h x k_w low-resolution images.

For a low-resolution partition whose student grid is (g_h, g_w) and a teacher with patch p and a fixed canvas
(H, W) (SAM: 1024 x 1024), each image is resized to a tile of (g_h p, g_w p) pixels, so that its teacher grid is
exactly the student's grid. Tiles sit at the top-left corners of k_h x k_w patch-aligned cells of the canvas
(k = canvas grid // tile grid per axis); the rest of each cell and of the canvas is padding with the teacher's
mean colour (zero after the teacher's own normalisation). The teacher runs once per canvas, and each tile's
feature window is cropped back: no interpolation of features, and k_h k_w times fewer teacher forwards. Where
the canvas holds fewer than two tiles, `plan_mosaic` returns None and the caller runs the teacher normally and
matches grids by interpolation.

Example (DESIGN.md section 4): SAM at 1024 with patch 16, student at 432 with patch 16: tiles of 432 px in
cells of 512 px (432 + 80 padding), 2 x 2 per canvas, each tile's region is 27 x 27 SAM tokens.

A mosaic gives features only: the teacher's summary of a canvas describes four images at once, so a summary
teacher on a mosaic partition contributes no summary target there (the training loop skips that loss).

References: RADIOv2.5 (Heinrich et al., 2024), multi-resolution training with mosaic augmentation.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MosaicPlan:
    """Where k_h x k_w tiles sit in one teacher canvas (all sizes in pixels unless named `grid`).

    tiles: (k_h, k_w); tile: (t_h, t_w) image size in each cell; cell: (c_h, c_w) cell pitch; canvas: (H, W);
    patch: the teacher's patch size (tile, cell and canvas are multiples of it).
    """

    tiles: tuple[int, int]
    tile: tuple[int, int]
    cell: tuple[int, int]
    canvas: tuple[int, int]
    patch: int

    @property
    def per_canvas(self) -> int:
        return self.tiles[0] * self.tiles[1]

    @property
    def tile_grid(self) -> tuple[int, int]:
        return self.tile[0] // self.patch, self.tile[1] // self.patch

    @property
    def cell_grid(self) -> tuple[int, int]:
        return self.cell[0] // self.patch, self.cell[1] // self.patch

    def num_canvases(self, batch: int) -> int:
        return math.ceil(batch / self.per_canvas)


def plan_mosaic(grid: tuple[int, int], patch: int, canvas: tuple[int, int]) -> MosaicPlan | None:
    """Plan a mosaic of tiles whose teacher grid is `grid` in a fixed `canvas`; None if fewer than 2 fit.

    Args:
        grid: the student's patch grid (g_h, g_w) of the low-resolution partition.
        patch: the teacher's patch size.
        canvas: the teacher's fixed input size (H, W), multiples of `patch`.
    """
    if canvas[0] % patch or canvas[1] % patch:
        raise ValueError(f"mosaic: canvas {canvas} is not a multiple of the teacher's patch size {patch}")
    cg = (canvas[0] // patch, canvas[1] // patch)
    k = (cg[0] // grid[0], cg[1] // grid[1])
    if k[0] * k[1] < 2:
        return None
    cell = (cg[0] // k[0] * patch, cg[1] // k[1] * patch)
    return MosaicPlan(tiles=k, tile=(grid[0] * patch, grid[1] * patch), cell=cell,
                      canvas=cast("tuple[int, int]", tuple(canvas)),
                      patch=patch)


def tile_images(images: Tensor, plan: MosaicPlan, pad_value: Sequence[float]) -> Tensor:
    """Place (B, 3, t_h, t_w) tiles into (ceil(B / k_h k_w), 3, H, W) canvases, row-major, padded with pad_value."""
    b, c, h, w = images.shape
    if (h, w) != plan.tile:
        raise ValueError(f"mosaic: tiles must be {plan.tile[0]}x{plan.tile[1]}, got {h}x{w}")
    (kh, kw), (ch, cw), (H, W) = plan.tiles, plan.cell, plan.canvas
    m = plan.num_canvases(b)
    pad = torch.as_tensor(pad_value, dtype=images.dtype, device=images.device).view(1, c, 1, 1)
    cells = pad.expand(m * kh * kw, c, ch, cw).clone()
    cells[:b, :, :h, :w] = images
    canvases = cells.view(m, kh, kw, c, ch, cw).permute(0, 3, 1, 4, 2, 5).reshape(m, c, kh * ch, kw * cw)
    if (kh * ch, kw * cw) != (H, W):
        full = pad.expand(m, c, H, W).clone()
        full[:, :, : kh * ch, : kw * cw] = canvases
        canvases = full
    return canvases


def crop_tiles(features: Tensor, plan: MosaicPlan, count: int) -> Tensor:
    """Cut the tiles' windows out of canvas features (M, C, H/p, W/p) -> (count, C, g_h, g_w), row-major."""
    m, c, fh, fw = features.shape
    cg = (plan.canvas[0] // plan.patch, plan.canvas[1] // plan.patch)
    if (fh, fw) != cg:
        raise ValueError(f"mosaic: teacher features are {fh}x{fw}, expected the canvas grid {cg[0]}x{cg[1]}")
    (kh, kw), (ch, cw), (gh, gw) = plan.tiles, plan.cell_grid, plan.tile_grid
    cells = features[:, :, : kh * ch, : kw * cw].reshape(m, c, kh, ch, kw, cw).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(m * kh * kw, c, ch, cw)[:count, :, :gh, :gw]


def mosaic_features(fn: Callable[[Tensor], Tensor], images: Tensor, plan: MosaicPlan,
                    pad_value: Sequence[float]) -> Tensor:
    """Teacher features of each image through the mosaic.

    Args:
        fn: canvases (M, 3, H, W) -> features (M, C, H/p, W/p).
        images: (B, 3, h, w) images in [0, 1] at any size; resized to the plan's tile size.
        pad_value: the padding colour (the teacher's mean, so padding normalizes to zero).
    Returns:
        (B, C, g_h, g_w) features, one tile each.
    """
    if tuple(images.shape[-2:]) != plan.tile:
        images = F.interpolate(images, size=plan.tile, mode="bilinear", align_corners=False,
                               antialias=True).clamp(0, 1)
    return crop_tiles(fn(tile_images(images, plan, pad_value)), plan, images.shape[0])
