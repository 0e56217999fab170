"""Fidelity of the student's adaptors to their teachers, per teacher and resolution (mode switching).

fidelity = Var(teacher) / MSE(student adaptor, teacher), in the teacher's own space (the adaptor's output mapped
back through the inverse normalizer), with the teacher's features resized to the student's grid; Var is the
per-channel variance over the whole validation set averaged over channels, so 1 means "no better than the
per-channel mean" and higher is better. cos-error = 1 - mean cosine similarity over patch tokens (and over
images for the summary). Accumulated over validation batches (and summed across ranks) by a torchmetrics Metric.

References: RADIOv2.5 (Heinrich et al., 2024), mode switching; DESIGN.md section 4.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


class FidelityMetric(Metric):
    """Streams the sums behind fidelity and cos-error for one teacher at one resolution.

    Args:
        dim: the teacher's feature width C.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        f64 = dict(dtype=torch.float64)
        self.add_state("sse", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("vectors", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("t_sum", torch.zeros(dim, **f64), dist_reduce_fx="sum")
        self.add_state("t_sq", torch.zeros(dim, **f64), dist_reduce_fx="sum")
        self.add_state("cos_sum", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("s_cos_sum", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("s_count", torch.zeros((), **f64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, pred_summary: Optional[Tensor] = None,
               target_summary: Optional[Tensor] = None) -> None:
        """pred, target: (B, C, h, w) on the same grid; summaries (B, C_s) or None."""
        p = pred.detach().double().permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
        t = target.detach().double().permute(0, 2, 3, 1).reshape(-1, target.shape[1])
        self.sse += ((p - t) ** 2).sum()
        self.vectors += t.shape[0]
        self.t_sum += t.sum(dim=0)
        self.t_sq += (t * t).sum(dim=0)
        self.cos_sum += F.cosine_similarity(p, t, dim=1).sum()
        if pred_summary is not None and target_summary is not None:
            self.s_cos_sum += F.cosine_similarity(pred_summary.detach().double(),
                                                  target_summary.detach().double(), dim=1).sum()
            self.s_count += pred_summary.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.vectors.clamp_min(1.0)
        mean = self.t_sum / n
        var = (self.t_sq / n - mean * mean).clamp_min(0.0).mean()
        mse = self.sse / (n * self.t_sum.numel())
        out = {"fidelity": (var / mse.clamp_min(1e-30)).float(), "cos_error": (1.0 - self.cos_sum / n).float()}
        if self.s_count > 0:
            out["summary_cos_error"] = (1.0 - self.s_cos_sum / self.s_count).float()
        return out


class FidelityHistory:
    """Fidelity per validation: [{"step", "teachers": {name: {resolution: {metric: value}}}}]; JSON and a plot."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, step: int, values: dict[str, dict[int, dict[str, float]]]) -> None:
        self.records = [r for r in self.records if r["step"] != step]
        self.records.append({"step": int(step), "teachers": {
            t: {str(r): dict(m) for r, m in per_res.items()} for t, per_res in values.items()}})

    def write(self, directory: str | Path) -> tuple[Path, Optional[Path]]:
        """Write fidelity.json and fidelity.png into `directory`; returns their paths (png None without data)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        js = directory / "fidelity.json"
        js.write_text(json.dumps(self.records, indent=2))
        return js, plot_fidelity(self.records, directory / "fidelity.png")


def plot_fidelity(records: list[dict[str, Any]], out_png: str | Path) -> Optional[Path]:
    """Left: fidelity vs resolution at the last validation, one line per teacher. Right: fidelity over steps."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    last = records[-1]
    for i, (name, per_res) in enumerate(last["teachers"].items()):
        colour = f"C{i % 10}"
        res = sorted(per_res, key=int)
        axes[0].plot([int(r) for r in res], [per_res[r]["fidelity"] for r in res], "o-", color=colour, label=name)
        for j, r in enumerate(res):  # one colour per teacher, darker and thicker for higher resolutions
            pts = [(rec["step"], rec["teachers"][name][r]["fidelity"]) for rec in records
                   if r in rec["teachers"].get(name, {})]
            steps, vals = zip(*pts)
            weight = (j + 1) / len(res)
            axes[1].plot(steps, vals, "o-", color=colour, alpha=0.3 + 0.7 * weight, linewidth=0.8 + 1.5 * weight,
                         markersize=3, label=f"{name} @ {r}px")
    axes[0].set_title(f"fidelity vs resolution (step {last['step']})")
    axes[0].set_xlabel("input resolution (px)")
    axes[1].set_title("fidelity over training")
    axes[1].set_xlabel("step")
    for ax in axes:
        ax.set_ylabel("Var(teacher) / MSE")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def fidelity_markdown(records: list[dict[str, Any]], primary: Optional[int] = None) -> list[str]:
    """Markdown lines: fidelity and cos-error per teacher and resolution at the last validation, and fidelity at
    the first vs the last validation (at `primary`, default the largest resolution)."""
    if not records:
        return []
    first, last = records[0], records[-1]
    res = sorted({int(r) for per in last["teachers"].values() for r in per})
    lines = [f"Fidelity = Var(teacher) / MSE(adaptor, teacher) in the teacher's space (higher is better; 1 = the "
             f"per-channel mean), and cos-error = 1 - mean cosine, at step {last['step']}:", "",
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
