"""Random resized crops aligned to a teacher's patch grid: pure geometry on canvases and feature grids.

A *canvas* is the centre square of an image at a teacher's cache resolution R (torchvision's `Resize(R)` of
the shorter side, then `CenterCrop(R)`, exactly `radio.data.transforms.eval_transform(R)`). Cell (i, j) of a
teacher with patch p covers canvas pixels [i p, (i + 1) p) x [j p, (j + 1) p); a canvas has floor(R / p) cells
per side (R need not be a multiple of p: SigLIP-SO400M-14 at 384 has 27 cells covering 378 pixels).

A `CropView` is a random resized crop drawn in whole cells of one *reference* grid (torchvision's
RandomResizedCrop sampling, counted in cells) plus a horizontal flip, or the whole canvas unflipped. The same
view cuts the student's image out of the reference canvas (`crop_image`, at an integer multiple of the canvas
size so that the cut stays on cell borders) and the cells out of every cached grid (`crop_grid`): a slice of
whole cells where the view falls on that grid's cell borders (always for the reference grid), otherwise a
bilinear resampling at the centres of round(extent) cells spanning exactly the view.

Every position is exact: boxes in other grids are rational numbers (`fractions.Fraction`), so "falls on cell
borders" is decided without rounding.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


class GridGeometry(NamedTuple):
    """A teacher's cached grid on its canvas: canvas side `resolution` (pixels), `patch` (pixels per cell),
    `grid` (rows, cols) = floor(resolution / patch) per side."""

    resolution: int
    patch: int
    grid: tuple[int, int]

    @property
    def cell(self) -> Fraction:
        """The side of one cell as a fraction of the canvas side."""
        return Fraction(self.patch, self.resolution)

    @property
    def covers_canvas(self) -> bool:
        return self.grid[0] * self.patch == self.resolution and self.grid[1] * self.patch == self.resolution


class CropView(NamedTuple):
    """One sample's view: a box of `height` x `width` reference cells at (`top`, `left`), a horizontal `flip`,
    and `whole`: the view is the entire canvas (every cached grid is used as written, unflipped or flipped)."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    whole: bool


def whole_view(ref: GridGeometry, flip: bool = False) -> CropView:
    return CropView(0, 0, ref.grid[0], ref.grid[1], flip, True)


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(()).uniform_(lo, hi, generator=generator))


def _randint(hi: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, hi]."""
    return int(torch.randint(0, hi + 1, (), generator=generator))


def draw_view(ref: GridGeometry, min_scale: float, whole_prob: float = 0.0, flip_prob: float = 0.5,
              ratio: tuple[float, float] = (3 / 4, 4 / 3),
              generator: torch.Generator | None = None) -> CropView:
    """A random view in whole cells of `ref`.

    With probability `whole_prob` the whole canvas, unflipped. Otherwise torchvision's RandomResizedCrop in cell
    units: area fraction ~ U(min_scale, 1) and log aspect ~ U(log ratio) rounded to whole cells, up to ten draws,
    else the largest centred box within `ratio`; then a flip with probability `flip_prob`.
    """
    if _uniform(0.0, 1.0, generator) < whole_prob:
        return whole_view(ref)
    gh, gw = ref.grid
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    box = None
    for _ in range(10):
        area = gh * gw * _uniform(min_scale, 1.0, generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= gw and 0 < h <= gh:
            box = (_randint(gh - h, generator), _randint(gw - w, generator), h, w)
            break
    if box is None:
        w, h = gw, gh
        if gw / gh < ratio[0]:
            h = max(1, round(gw / ratio[0]))
        elif gw / gh > ratio[1]:
            w = max(1, round(gh * ratio[1]))
        box = ((gh - h) // 2, (gw - w) // 2, h, w)
    flip = _uniform(0.0, 1.0, generator) < flip_prob
    whole = box == (0, 0, gh, gw) and ref.covers_canvas
    return CropView(*box, flip, whole)


def box_in(view: CropView, ref: GridGeometry, other: GridGeometry) -> tuple[Fraction, Fraction, Fraction, Fraction]:
    """The view's box (top, left, bottom, right) in cells of `other` (exact rationals)."""
    if view.whole:
        return Fraction(0), Fraction(0), Fraction(other.grid[0]), Fraction(other.grid[1])
    k = ref.cell / other.cell
    return (view.top * k, view.left * k, (view.top + view.height) * k, (view.left + view.width) * k)


def is_aligned(box: tuple[Fraction, ...], grid: tuple[int, int]) -> bool:
    """Whether a box falls on cell borders inside a (rows, cols) grid."""
    top, left, bottom, right = box
    return (all(v.denominator == 1 for v in box) and 0 <= top < bottom <= grid[0] and 0 <= left < right <= grid[1])


def resample_box(features: Tensor, box: tuple[Fraction, ...]) -> Tensor:
    """Bilinear samples of (C, h, w) features at the centres of round(extent) cells spanning `box` (in cells of
    `features`); positions outside the grid take the border value. -> (C, h', w')."""
    top, left, bottom, right = (float(v) for v in box)
    gh, gw = features.shape[-2:]
    oh, ow = max(1, round(bottom - top)), max(1, round(right - left))
    ys = top + (torch.arange(oh, dtype=torch.float64) + 0.5) * (bottom - top) / oh
    xs = left + (torch.arange(ow, dtype=torch.float64) + 0.5) * (right - left) / ow
    yy, xx = torch.meshgrid(2 * ys / gh - 1, 2 * xs / gw - 1, indexing="ij")
    grid = torch.stack([xx, yy], dim=-1)[None].to(features.dtype)
    out = F.grid_sample(features[None].float(), grid.float(), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0].to(features.dtype)


def crop_grid(features: Tensor, view: CropView, ref: GridGeometry, geom: GridGeometry) -> Tensor:
    """The cells of one cached grid (C, h, w) under `view`, flipped with it -> (C, h', w').

    Exact (a slice) when the view falls on this grid's cell borders, else `resample_box`.
    """
    if tuple(features.shape[-2:]) != tuple(geom.grid):
        raise ValueError(f"crop_grid: features of {tuple(features.shape[-2:])} cells, expected {geom.grid}")
    box = box_in(view, ref, geom)
    if view.whole:
        out = features
    elif is_aligned(box, geom.grid):
        top, left, bottom, right = (int(v) for v in box)
        out = features[:, top:bottom, left:right]
    else:
        out = resample_box(features, box)
    return out.flip(-1) if view.flip else out


def canvas_geometry(height: int, width: int, resolution: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, top, left) of `eval_transform(resolution)` on a height x width image:
    shorter side -> resolution, longer side -> int(resolution * long / short), centre crop offsets rounded."""
    if height <= width:
        rh, rw = resolution, int(resolution * width / height)
    else:
        rh, rw = int(resolution * height / width), resolution
    return rh, rw, int(round((rh - resolution) / 2.0)), int(round((rw - resolution) / 2.0))


def canvas_image(image: Tensor, resolution: int, scale: int = 1) -> Tensor:
    """The canvas of an image (3, H, W) (uint8 or float) at `resolution`, drawn at `scale` times its size:
    (3, scale R, scale R), with the geometry of `eval_transform(resolution)` scaled by `scale` (scale 1 is
    exactly eval_transform before its dtype conversion)."""
    rh, rw, top, left = canvas_geometry(image.shape[-2], image.shape[-1], resolution)
    x = TF.resize(image, [rh * scale, rw * scale], antialias=True)
    return TF.crop(x, top * scale, left * scale, resolution * scale, resolution * scale)


def crop_image(canvas: Tensor, view: CropView, ref: GridGeometry, size: int | None) -> Tensor:
    """The student's image: the view's box of a canvas drawn at `scale` = side / ref.resolution times the
    reference canvas (an integer), resized (antialiased) to size x size (None: kept at the box's size), flipped
    with the view -> float (3, size, size) in [0, 1] from uint8, else in the canvas's dtype."""
    side = canvas.shape[-1]
    if side % ref.resolution:
        raise ValueError(f"crop_image: canvas side {side} is not a multiple of the reference canvas "
                         f"{ref.resolution}")
    if view.whole:
        box = (0, 0, side, side)
    else:
        px = ref.patch * side // ref.resolution
        box = (view.top * px, view.left * px, view.height * px, view.width * px)
    if size is None:
        x = TF.crop(canvas, *box)
    else:
        x = TF.resized_crop(canvas, *box, size=[size, size], antialias=True)
    if view.flip:
        x = TF.horizontal_flip(x)
    return TF.to_dtype(x, torch.float32, scale=True) if x.dtype == torch.uint8 else x
