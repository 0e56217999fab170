"""Image transforms: images become float tensors in [0, 1]; models normalize inside."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2 as T


def train_transform(resolution: int, min_scale: float = 0.35, flip: bool = True) -> T.Compose:
    ops = [T.RandomResizedCrop(resolution, scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([T.ToImage(), *ops, T.ToDtype(torch.float32, scale=True)])


def eval_transform(resolution: int) -> T.Compose:
    return T.Compose([T.ToImage(), T.Resize(resolution, antialias=True), T.CenterCrop(resolution),
                      T.ToDtype(torch.float32, scale=True)])


def to_tensor(img: Image.Image) -> torch.Tensor:
    return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])(img)
