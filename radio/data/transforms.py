"""Image transforms: images become float tensors in [0, 1]; models normalize inside."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T


def train_transform(resolution: int, min_scale: float = 0.35, flip: bool = True) -> T.Compose:
    ops = [T.RandomResizedCrop(resolution, scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([T.ToImage(), *ops, T.ToDtype(torch.float32, scale=True)])


def eval_transform(resolution: int) -> T.Compose:
    return T.Compose([T.ToImage(), T.Resize(resolution, antialias=True), T.CenterCrop(resolution),
                      T.ToDtype(torch.float32, scale=True)])


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of (B, 3, H, W) images in [0, 1]; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def resize_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (B, C, h, w) feature grid (antialiased when shrinking); a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    shrink = grid[0] < x.shape[-2] or grid[1] < x.shape[-1]
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False, antialias=shrink)
