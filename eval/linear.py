"""Linear probe: frozen features, a grid of linear heads (learning rates x pooling), the best chosen on val.

Poolings: `summary` (the summary vector: CLS / concatenated summary tokens), `patch_mean` (mean of the patch
features) and `summary+patch_mean` (both concatenated, DINOv2's "avgpool" option). Inputs are standardized per
channel with the training statistics, so heads see comparable scales whatever the backbone's feature scale.

References: DINOv2 (Oquab et al., 2023) linear evaluation; AM-RADIO / RADIOv2.5 probes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.heads import GridResult, standardize, train_head_grid

POOLINGS = ("summary", "patch_mean", "summary+patch_mean")
DEFAULT_LRS = (1e-4, 1e-3, 1e-2, 1e-1)


def pooled_inputs(summary: Tensor, pooled: Tensor) -> dict[str, Tensor]:
    """Pooling name -> (N, C) input. summary: (N, C_s); pooled: (N, C_f)."""
    return {"summary": summary, "patch_mean": pooled, "summary+patch_mean": torch.cat([summary, pooled], 1)}


def accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def linear_probe(train: dict[str, Tensor], train_y: Tensor, val: dict[str, Tensor], val_y: Tensor,
                 lrs: Sequence[float] = DEFAULT_LRS, poolings: Sequence[str] = POOLINGS, epochs: int = 30,
                 batch_size: int = 256, seed: int = 0, num_classes: int | None = None,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Top-1 of the best (pooling, lr) head on val, with the full grid and its curves.

    Args:
        train, val: pooling name -> (N, C) features (see `pooled_inputs`); train_y, val_y: (N,) labels, -1 ignored.
    """
    keep_tr, keep_va = train_y >= 0, val_y >= 0
    if not keep_tr.any() or not keep_va.any():
        raise ValueError("linear probe needs labelled training and validation samples (label >= 0)")
    train_y, val_y = train_y[keep_tr], val_y[keep_va]
    unknown = [p for p in poolings if p not in train]
    if unknown:
        raise ValueError(f"unknown pooling(s) {unknown}; valid: {', '.join(train)}")
    num_classes = int(num_classes or max(int(train_y.max()), int(val_y.max())) + 1)
    xs_tr, xs_va = {}, {}
    for p in poolings:
        xs_tr[p], xs_va[p] = standardize(train[p][keep_tr].float(), val[p][keep_va].float())
    heads, names, lr_list, keys = [], [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in poolings:
            for lr in lrs:
                heads.append(nn.Linear(xs_tr[p].shape[1], num_classes))
                names.append(f"{p} lr={lr:g}")
                lr_list.append(lr)
                keys.append(p)

    va_dev = {k: v.to(device) for k, v in xs_va.items()}
    val_y_dev = val_y.to(device)

    def evaluate(hs: Sequence[nn.Module]) -> list[float]:
        return [accuracy(h(va_dev[k]), val_y_dev) for h, k in zip(hs, keys)]

    grid: GridResult = train_head_grid(heads, names, lr_list, keys, xs_tr, train_y, F.cross_entropy, evaluate,
                                       epochs=epochs, batch_size=batch_size, seed=seed, device=device)
    b = grid.best
    majority = torch.bincount(train_y, minlength=num_classes).argmax()
    return {
        "top1": grid.scores[b], "best_pooling": keys[b], "best_lr": lr_list[b], "epochs": epochs,
        "num_train": int(len(train_y)), "num_test": int(len(val_y)), "num_classes": num_classes,
        "chance": 1.0 / num_classes, "majority_baseline": float((val_y == majority).float().mean()),
        "grid": grid.as_dict(),
    }
