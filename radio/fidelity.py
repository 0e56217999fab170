"""Fidelity of a student's adaptors to their teachers: one metric, its history and its plot.

fidelity = Var(teacher) / MSE(student adaptor, teacher), in the teacher's own space, on the same grid; Var is
the per-channel variance over every image and position, averaged over channels, so 1 means "no better than
the per-channel mean" and higher is better. cos-error = 1 - mean cosine similarity over patch tokens (and over
images for the summary). `FidelityMetric` streams the sums (float64) over batches and, in training, sums them
across ranks; the training validation (radio.train.validation) and `radio eval fidelity` (eval.fidelity) both
use it, and both draw `plot_fidelity`.

References: RADIOv2.5 (Heinrich et al., 2024), mode switching; DESIGN.md section 4.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

EPS = 1e-30  # floor of the MSE in the ratio (a perfect prediction gives a huge, finite fidelity)


def _rows(x: Tensor) -> Tensor:
    """(B, C, ...) -> (B x ..., C) float64: one row per image and position, channels on dim 1."""
    return x.detach().double().movedim(1, -1).reshape(-1, x.shape[1])


class FidelityMetric(Metric):
    """Streams the sums behind fidelity and cos-error for one teacher at one resolution.

    Args:
        dim: the teacher's feature width C.
    """

    full_state_update = False
    higher_is_better = True
    sse: Tensor
    vectors: Tensor
    t_sum: Tensor
    t_sq: Tensor
    cos_sum: Tensor
    s_cos_sum: Tensor
    s_count: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        f64: dict[str, Any] = dict(dtype=torch.float64)
        self.add_state("sse", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("vectors", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("t_sum", torch.zeros(dim, **f64), dist_reduce_fx="sum")
        self.add_state("t_sq", torch.zeros(dim, **f64), dist_reduce_fx="sum")
        self.add_state("cos_sum", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("s_cos_sum", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("s_count", torch.zeros((), **f64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, pred_summary: Tensor | None = None,
               target_summary: Tensor | None = None) -> None:
        """pred, target: (B, C, h, w) on the same grid (or (B, C)); summaries (B, C_s) or None."""
        p, t = _rows(pred), _rows(target)
        self.sse += ((p - t) ** 2).sum()
        self.vectors += t.shape[0]
        self.t_sum += t.sum(dim=0)
        self.t_sq += (t * t).sum(dim=0)
        self.cos_sum += F.cosine_similarity(p, t, dim=1).sum()
        if pred_summary is not None and target_summary is not None:
            self.s_cos_sum += F.cosine_similarity(pred_summary.detach().double(),
                                                  target_summary.detach().double(), dim=1).sum()
            self.s_count += pred_summary.shape[0]

    def results(self) -> dict[str, Tensor]:
        """float64 scalars from this process's sums: fidelity, mse, teacher_var, cos_error (and
        summary_cos_error once summaries were given)."""
        n = self.vectors.clamp_min(1.0)
        mean = self.t_sum / n
        var = (self.t_sq / n - mean * mean).clamp_min(0.0).mean()
        mse = self.sse / (n * self.t_sum.numel())
        out = {"fidelity": var / mse.clamp_min(EPS), "mse": mse, "teacher_var": var,
               "cos_error": 1.0 - self.cos_sum / n}
        if self.s_count > 0:
            out["summary_cos_error"] = 1.0 - self.s_cos_sum / self.s_count
        return out

    def compute(self) -> dict[str, Tensor]:
        """fidelity, cos_error (and summary_cos_error) as float32, over every rank's sums."""
        return {k: v.float() for k, v in self.results().items() if k not in ("mse", "teacher_var")}


@torch.no_grad()
def fidelity(pred: Tensor, target: Tensor) -> Tensor:
    """Fidelity of one batch (float64 scalar). pred, target: (B, C) or (B, C, h, w), channels on dim 1."""
    metric = FidelityMetric(target.shape[1]).to(target.device)
    metric.update(pred, target)
    return metric.results()["fidelity"]


class FidelityHistory:
    """Fidelity per validation, [{"step", "teachers": {name: {resolution: {metric: value}}}}]: JSON, plot."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, step: int, values: dict[str, dict[int, dict[str, float]]]) -> None:
        self.records = [r for r in self.records if r["step"] != step]
        self.records.append({"step": int(step), "teachers": {
            t: {str(r): dict(m) for r, m in per_res.items()} for t, per_res in values.items()}})

    def write(self, directory: str | Path) -> tuple[Path, Path | None]:
        """Write fidelity.json and fidelity.png into `directory`; returns their paths (png None if empty)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        js = directory / "fidelity.json"
        js.write_text(json.dumps(self.records, indent=2))
        if not self.records:
            return js, None
        return js, plot_fidelity(history_curves(self.records), directory / "fidelity.png",
                                 history=self.records, title=f" (step {self.records[-1]['step']})")


def history_curves(records: list[dict[str, Any]]) -> dict[str, dict[str, list]]:
    """The last validation of a history as curves: teacher -> {"resolutions", "fidelity", "cos_error"}."""
    out = {}
    for name, per_res in records[-1]["teachers"].items():
        res = sorted(per_res, key=int)
        metrics = [m for m in ("fidelity", "cos_error") if all(m in per_res[r] for r in res)]
        out[name] = {"resolutions": [int(r) for r in res]}
        out[name].update({m: [per_res[r][m] for r in res] for m in metrics})
    return out


def plot_fidelity(curves: dict[str, dict[str, list]], out_png: str | Path,
                  history: list[dict[str, Any]] | None = None, title: str = "") -> Path:
    """The fidelity plot of training and eval.

    Panels: fidelity vs resolution and cos-error vs resolution, one line per curve (label -> {"resolutions",
    "fidelity", "cos_error"}); with `history` (FidelityHistory records, labels = teacher names) a third panel
    shows fidelity over the training steps, per teacher and resolution (darker, thicker when higher).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if history else 2, figsize=(18 if history else 12, 4.5))
    colours = {label: f"C{i % 10}" for i, label in enumerate(curves)}
    for label, c in curves.items():
        axes[0].plot(c["resolutions"], c["fidelity"], "o-", color=colours[label], label=label)
        if "cos_error" in c:
            axes[1].plot(c["resolutions"], c["cos_error"], "o-", color=colours[label], label=label)
    axes[0].set_title(f"fidelity = Var(teacher) / MSE(adaptor, teacher){title}")
    axes[0].set_ylabel("Var(teacher) / MSE  (higher is better)")
    axes[1].set_title(f"cos-error = 1 - cos(adaptor, teacher){title}")
    axes[1].set_ylabel("1 - cos  (lower is better)")
    for ax in axes[:2]:
        ax.set_xlabel("input resolution (px)")
    values = [v for c in curves.values() for v in c["fidelity"] if v > 0]
    if history:
        for name in curves:
            res = sorted({r for rec in history for r in rec["teachers"].get(name, {})}, key=int)
            for j, r in enumerate(res):
                pts = [(rec["step"], rec["teachers"][name][r]["fidelity"]) for rec in history
                       if r in rec["teachers"].get(name, {})]
                steps, vals = zip(*pts)
                values += [v for v in vals if v > 0]
                weight = (j + 1) / len(res)
                axes[2].plot(steps, vals, "o-", color=colours[name], alpha=0.3 + 0.7 * weight,
                             linewidth=0.8 + 1.5 * weight, markersize=3, label=f"{name} @ {r}px")
        axes[2].set_title("fidelity over training")
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("Var(teacher) / MSE")
    if values and max(values) > 10 * min(values):
        for ax in (axes[0], *axes[2:]):
            ax.set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def fidelity_markdown(records: list[dict[str, Any]], primary: int | None = None) -> list[str]:
    """Markdown lines: fidelity and cos-error per teacher and resolution at the last validation, and fidelity
    at the first vs the last validation (at `primary`, default the largest resolution)."""
    if not records:
        return []
    first, last = records[0], records[-1]
    res = sorted({int(r) for per in last["teachers"].values() for r in per})
    lines = [f"Fidelity = Var(teacher) / MSE(adaptor, teacher) in the teacher's space (higher is better; "
             f"1 = the per-channel mean), and cos-error = 1 - mean cosine, at step {last['step']}:", "",
             "| teacher | metric | " + " | ".join(f"{r} px" for r in res) + " |",
             "|---|---|" + "---|" * len(res)]
    for name, per in last["teachers"].items():
        for metric in ("fidelity", "cos_error"):
            cells = [f"{per[str(r)][metric]:.3f}" if str(r) in per else "" for r in res]
            lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    p = str(primary or res[-1])
    lines += ["", f"Fidelity at {p} px over training (step {first['step']} -> {last['step']}): " + "; ".join(
        f"{name} {first['teachers'][name][p]['fidelity']:.3f} -> {per[p]['fidelity']:.3f}"
        for name, per in last["teachers"].items() if p in per and p in first["teachers"].get(name, {})), ""]
    return lines
