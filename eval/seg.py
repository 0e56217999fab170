"""Segmentation probe: frozen patch features, BatchNorm + 1x1 convolution, upsampled logits, mIoU.

The head sees the (h, w) patch grid of a frozen encoder; its logits are bilinearly upsampled to the mask size
and trained with cross-entropy that skips ignored pixels (IGNORE = -1). A grid of learning rates trains in one
pass; the best head on val is reported. mIoU: per-class IoU (torchmetrics Jaccard index) averaged over the
classes that occur in the predictions or the targets; ignored pixels count for neither.

References: DINOv2 (Oquab et al., 2023) linear segmentation probe; RADIOv2.5 ADE20K probe.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.datasets import IGNORE
from eval.heads import train_head_grid

DEFAULT_LRS = (1e-3, 1e-2, 1e-1)


class SegHead(nn.Module):
    """BatchNorm2d + 1x1 Conv2d: (B, C, h, w) -> logits (B, K, h, w)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.bn(x))


def upsampled_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy of logits (B, K, h, w) bilinearly upsampled to masks (B, H, W); IGNORE pixels skipped."""
    logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=IGNORE)


def iou_scores(pred: Tensor, target: Tensor, num_classes: int) -> dict[str, Any]:
    """mIoU, per-class IoU (NaN where a class is in neither) and pixel accuracy; target IGNORE pixels skipped.

    pred, target: integer tensors of one shape (any), pred in [0, num_classes).
    """
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=IGNORE, average="none",
                                    zero_division=math.nan).to(pred.device)
    per_class = metric(pred.flatten(), target.flatten().to(pred.device)).cpu()
    pred, target = pred.cpu(), target.cpu()
    valid = target != IGNORE
    acc = float((pred[valid] == target[valid]).float().mean()) if valid.any() else math.nan
    return {"miou": float(per_class.nanmean()), "per_class_iou": [float(v) for v in per_class], "pixel_acc": acc}


@torch.no_grad()
def predict(head: nn.Module, dense: Tensor, size: tuple[int, int], chunk: int = 16) -> Tensor:
    """Class per pixel (N, H, W) from dense features (N, C, h, w)."""
    out = []
    for x in dense.split(chunk):
        logits = head(x.float())
        out.append(F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1))
    return torch.cat(out)


def seg_probe(train_dense: Tensor, train_masks: Tensor, val_dense: Tensor, val_masks: Tensor, num_classes: int,
              class_names: Sequence[str] | None = None, lrs: Sequence[float] = DEFAULT_LRS, epochs: int = 20,
              batch_size: int = 16, seed: int = 0, train_label_scale: int | None = 4,
              device: str = "cpu") -> dict[str, Any]:
    """mIoU of the best BN + 1x1 conv head on val.

    Args:
        train_dense, val_dense: (N, C, h, w) frozen patch features; train_masks, val_masks: (N, H, W) int64 with
            IGNORE = -1.
        train_label_scale: training labels are nearest-sampled to this many pixels per patch (logits upsampled as
            far), which saves most of the loss's cost; scoring is always at the full mask size. None: full size.
    """
    if (train_masks != IGNORE).sum() == 0 or (val_masks != IGNORE).sum() == 0:
        raise ValueError("segmentation probe: every training or validation pixel is ignored")
    size = cast("tuple[int, int]", tuple(val_masks.shape[-2:]))
    patches = train_dense.shape[-2:]
    if train_label_scale and train_masks.shape[-1] > train_label_scale * patches[-1]:
        small = (train_label_scale * patches[0], train_label_scale * patches[1])
        train_masks = F.interpolate(train_masks[:, None].float(), size=small, mode="nearest-exact")[:, 0].long()
    heads, names = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for lr in lrs:
            heads.append(SegHead(train_dense.shape[1], num_classes))
            names.append(f"lr={lr:g}")

    val_dense_dev, val_masks_dev = val_dense.to(device), val_masks.to(device)

    def evaluate(hs: Sequence[nn.Module]) -> list[float]:
        return [iou_scores(predict(h, val_dense_dev, size), val_masks_dev, num_classes)["miou"] for h in hs]

    grid = train_head_grid(heads, names, list(lrs), ["dense"] * len(heads), {"dense": train_dense}, train_masks,
                           upsampled_loss, evaluate, epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                           eval_every=max(1, epochs // 5))  # full-resolution mIoU is costly: 5 curve points
    best = heads[grid.best].eval()
    scores = iou_scores(predict(best, val_dense_dev, size).cpu(), val_masks, num_classes)
    counts = torch.bincount(train_masks[train_masks != IGNORE].flatten(), minlength=num_classes)
    majority = iou_scores(torch.full_like(val_masks, int(counts.argmax())), val_masks, num_classes)
    names_out = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    return {
        "miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
        "per_class_iou": dict(zip(names_out, scores["per_class_iou"])),
        "best_lr": grid.lrs[grid.best], "epochs": epochs, "num_train": int(train_masks.shape[0]),
        "num_test": int(val_masks.shape[0]), "num_classes": num_classes, "mask_size": list(size),
        "train_label_size": list(train_masks.shape[-2:]),
        "majority_miou": majority["miou"], "majority_pixel_acc": majority["pixel_acc"],
        "grid": grid.as_dict(),
    }
