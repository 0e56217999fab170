"""Reports: `report.json` (everything measured), `report.md` (tables people read) and PNG plots."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning CSVLogger metrics -> name -> [(step, value)], blanks skipped."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if step in (None, ""):
                continue
            for k, v in row.items():
                if k in ("step", "epoch") or v in (None, ""):
                    continue
                series.setdefault(k, []).append((int(float(step)), float(v)))
    return series


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path,
                         prefixes: tuple[str, ...] = ("train/", "val/")) -> Optional[Path]:
    """Plot the total loss and per-teacher loss terms over steps; returns the PNG path (None if no data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics_csv(metrics_csv)
    loss_keys = [k for k in series if k.startswith(prefixes) and not k.endswith("fidelity")]
    if not loss_keys:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for k in sorted(loss_keys):
        steps, vals = zip(*series[k])
        ax = axes[0] if k.startswith("train/") else axes[1]
        style = "-" if k.startswith("train/") else "o-"
        ax.plot(steps, vals, style, label=k, linewidth=2.2 if k.endswith("/loss") else 1.0)
    for ax, title in zip(axes, ("training loss", "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def write_report(out_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.json and report.md. Expected keys: title, models, probes, and optional training/notes/plots.

    probes: {probe: {model: {label_field: {metric: value}}}}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2))
    lines = [f"# {report.get('title', 'radio report')}", ""]
    if report.get("summary"):
        lines += [report["summary"], ""]
    models = report.get("models", {})
    if models:
        lines += ["## Models", "", "| model | kind | details |", "|---|---|---|"]
        for name, m in models.items():
            details = ", ".join(f"{k}={_fmt(v)}" for k, v in m.items() if k != "kind")
            lines.append(f"| {name} | {m.get('kind', '')} | {details} |")
        lines.append("")
    for probe, per_model in report.get("probes", {}).items():
        fields = sorted({f for r in per_model.values() for f in r})
        lines += [f"## {probe}", ""]
        head = "| model | " + " | ".join(fields) + " |"
        lines += [head, "|" + "---|" * (len(fields) + 1)]
        for name, r in per_model.items():
            cells = [_fmt(r[f]["top1"]) if f in r and "top1" in r[f] else _fmt(r.get(f, "")) for f in fields]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        base = next(iter(per_model.values()), {})
        baselines = {f: (base[f].get("chance"), base[f].get("majority_baseline")) for f in fields
                     if isinstance(base.get(f), dict) and "chance" in base[f]}
        if baselines:
            lines.append("")
            lines.append("Baselines: " + "; ".join(f"{f}: chance {_fmt(c)}, majority {_fmt(m)}"
                                                    for f, (c, m) in baselines.items()))
        lines.append("")
    training = report.get("training")
    if training:
        lines += ["## Training", "", "| metric | first | last |", "|---|---|---|"]
        for k, v in training.get("metrics", {}).items():
            lines.append(f"| {k} | {_fmt(v['first'])} | {_fmt(v['last'])} |")
        lines.append("")
    for p in report.get("plots", []):
        lines += [f"![{Path(p).stem}]({Path(p).name})", ""]
    notes = report.get("notes", [])
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path
