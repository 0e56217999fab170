"""PNG plots of the evaluation: PCA of feature maps side by side, probe curves (fidelity: radio.fidelity).

Every function takes plain results (the dicts the probes return) and a path, and returns the path written.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    _plt().close(fig)
    return out_png


def pca_rgb(features: Tensor) -> Tensor:
    """(n, C, h, w) -> (n, h, w, 3) in [0, 1]: the first 3 principal components over all n x h x w positions,
    each scaled by its 1st-99th percentiles."""
    n, c, h, w = features.shape
    x = features.float().permute(0, 2, 3, 1).reshape(-1, c)
    x = x - x.mean(0, keepdim=True)
    q = min(3, c, x.shape[0])
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[:q].T
    if q < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - q)], 1)
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return rgb.reshape(n, h, w, 3)


def plot_pca(images: Tensor, feature_maps: dict[str, Tensor], out_png: str | Path) -> Path:
    """images: (n, 3, H, W) in [0, 1]; feature_maps: model -> (n, C, h, w). Rows: images; columns: the image,
    then each model's feature map as its first 3 principal components (fitted per model over the n images)."""
    plt = _plt()
    n = images.shape[0]
    cols = 1 + len(feature_maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    rgbs = {m: pca_rgb(f) for m, f in feature_maps.items()}
    for i in range(n):
        axes[i][0].imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        for j, (m, rgb) in enumerate(rgbs.items(), start=1):
            axes[i][j].imshow(rgb[i].numpy(), interpolation="nearest")
            if i == 0:
                axes[i][j].set_title(m, fontsize=9)
        if i == 0:
            axes[i][0].set_title("image", fontsize=9)
        for ax in axes[i]:
            ax.axis("off")
    return _save(fig, out_png)


def plot_probe_curves(probe: str, results: dict[str, dict[str, dict[str, Any]]], out_png: str | Path,
                      metric: str = "top1") -> Path:
    """results: model -> task -> probe result with a "grid" (see eval.heads.GridResult.as_dict). One row per task:
    the best head's validation curve per model, and the final score against the learning rate per model."""
    plt = _plt()
    tasks = sorted({t for per in results.values() for t, r in per.items() if isinstance(r, dict) and "grid" in r})
    fig, axes = plt.subplots(max(1, len(tasks)), 2, figsize=(12, 3.6 * max(1, len(tasks))), squeeze=False)
    for row, task in zip(axes, tasks):
        for model, per in results.items():
            r = per.get(task)
            if not isinstance(r, dict) or "grid" not in r:
                continue
            heads = r["grid"]["heads"]
            best = next(h for h in heads if h["name"] == r["grid"]["best"])
            epochs = r["grid"].get("curve_epochs") or list(range(1, len(best["curve"]) + 1))
            row[0].plot(epochs, best["curve"], "o-", label=f"{model} ({best['name']})")
            by_lr: dict[float, float] = {}
            for h in heads:
                if math.isfinite(h["score"]):
                    by_lr[h["lr"]] = max(by_lr.get(h["lr"], -math.inf), h["score"])
            lrs = sorted(by_lr)
            row[1].plot(lrs, [by_lr[lr] for lr in lrs], "o-", label=model)
        row[0].set_title(f"{probe} / {task}: best head, validation {metric} per epoch")
        row[0].set_xlabel("epoch")
        row[1].set_title(f"{probe} / {task}: final validation {metric} vs learning rate")
        row[1].set_xscale("log")
        row[1].set_xlabel("learning rate")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, out_png)


def plot_vlm_curves(results: dict[str, dict[str, Any]], out_png: str | Path) -> Path:
    """results: model -> VLM probe result; training loss per step, stage 1 then stage 2, one line per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for model, r in results.items():
        curves = r.get("loss_curves", {})
        s1, s2 = curves.get("stage1", []), curves.get("stage2", [])
        ax.plot(range(len(s1) + len(s2)), s1 + s2, label=f"{model} (stage 1 -> 2 at step {len(s1)})")
    ax.set_title("VLM probe: training loss (answer tokens)")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)

