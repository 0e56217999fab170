"""Reports: `report.json` (everything measured), `report.md` (tables people read) and PNG plots."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


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
                         prefixes: tuple[str, ...] = ("train/", "val/")) -> Path | None:
    """Plot the total loss and per-teacher loss terms over steps; returns the PNG path (None if no data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics_csv(metrics_csv)
    # the loss and its per-teacher terms; per-resolution (`@res`) copies and the diagnostics go to other plots
    loss_keys = [k for k in series if k.startswith(prefixes) and "@" not in k
                 and not k.endswith(("fidelity", "cos_error", "/stage"))]
    if not loss_keys:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
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
            ax.legend(fontsize=7, ncol=1 + len(ax.lines) // 10)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


HEADLINE = ("top1", "miou", "exact_match", "fidelity")
PROBE_TITLES = {"knn": "kNN top-1 (k = 20, T = 0.07)", "linear": "Linear probe top-1 (best head on val)",
                "seg": "Segmentation probe mIoU (BN + 1x1 conv)", "zeroshot": "Zero-shot top-1",
                "vlm": "VLM probe exact match (LLaVA-1.5 protocol)", "fidelity": "Fidelity to the teachers"}


def headline(result: Any) -> tuple[str, Any]:
    """(metric name, value) that stands for a probe result in tables: top1, miou, exact_match or fidelity."""
    if isinstance(result, dict):
        for k in HEADLINE:
            if k in result:
                return k, result[k]
    return "", result


def _baselines(per_model: dict[str, Any], tasks: list[str]) -> list[str]:
    out = []
    for t in tasks:
        r = next((p[t] for p in per_model.values() if isinstance(p.get(t), dict)), None)
        if not r:
            continue
        parts = [f"{label} {_fmt(r[k])}" for k, label in (("chance", "chance"), ("majority_baseline", "majority"),
                                                           ("majority_miou", "majority-class mIoU"))
                 if k in r]
        if parts:
            out.append(f"{t}: " + ", ".join(parts))
    return out


def _probe_table(probe: str, per_model: dict[str, Any]) -> list[str]:
    tasks = sorted({t for r in per_model.values() for t in r if not t.startswith("_")})
    lines = ["| model | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for name, r in per_model.items():
        cells = []
        for t in tasks:
            _, v = headline(r.get(t, ""))
            cell = _fmt(v)
            if probe == "vlm" and isinstance(r.get(t), dict) and "stage1" in r[t]:
                cell = f"{_fmt(r[t]['stage1']['exact_match'])} -> {cell}" if "stage2" in r[t] else cell
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if probe == "vlm":
        lines += ["", "Cells: stage 1 (projector only) -> stage 2 (projector + LM)."] + _per_question(per_model)
    base = _baselines(per_model, tasks)
    if base:
        lines += ["", "Baselines: " + "; ".join(base)]
    return lines


def _per_question(per_model: dict[str, Any]) -> list[str]:
    """VLM exact match per question (final stage) for every model, with the blind baseline's."""
    rows = {f"{m} / {t}": r for m, per in per_model.items() for t, r in per.items() if r.get("per_question")}
    if not rows:
        return []
    first = next(iter(rows.values()))
    qs = list(first["per_question"])
    lines = ["", "| model / task | " + " | ".join(qs) + " |", "|" + "---|" * (len(qs) + 1)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r["per_question"].get(q, "")) for q in qs) + " |")
    if first.get("majority_per_question"):
        lines.append("| majority answer | " + " | ".join(_fmt(first["majority_per_question"].get(q, ""))
                                                         for q in qs) + " |")
    return lines


def _fidelity_tables(per_model: dict[str, Any]) -> list[str]:
    lines = []
    for student, per_teacher in per_model.items():
        for teacher, r in per_teacher.items():
            if not isinstance(r, dict) or "resolutions" not in r:
                continue
            res = r["resolutions"]
            lines += [f"**{student} -> {teacher}**", "", "| metric | " + " | ".join(f"{x} px" for x in res) + " |",
                      "|" + "---|" * (len(res) + 1)]
            for k in ("fidelity", "cos_error", "summary_cos_error"):
                if k in r:
                    lines.append(f"| {k} | " + " | ".join(_fmt(v) for v in r[k]) + " |")
            lines.append("")
    return lines


def student_vs_teachers(report: dict[str, Any]) -> list[str]:
    """Rows (probe, task): each student's headline score, the best teacher's, and the difference."""
    models = report.get("models", {})
    students = [m for m, d in models.items() if str(d.get("kind", "")).startswith("student")]
    teachers = [m for m, d in models.items() if d.get("kind") == "teacher"]
    if not students or not teachers:
        return []
    lines = ["| probe | task | " + " | ".join(students) + " | best teacher | student - best teacher |",
             "|" + "---|" * (len(students) + 4)]
    rows = 0
    for probe, per_model in report.get("probes", {}).items():
        if probe == "fidelity":
            continue
        tasks = sorted({t for r in per_model.values() for t in r if not t.startswith("_")})
        for t in tasks:
            t_scores = {m: headline(per_model[m].get(t))[1] for m in teachers if m in per_model}
            t_scores = {m: v for m, v in t_scores.items() if isinstance(v, float)}
            s_scores = [headline(per_model.get(s, {}).get(t))[1] for s in students]
            if not t_scores or not isinstance(s_scores[0], float):
                continue
            best = max(t_scores, key=lambda m: t_scores[m])
            lines.append(f"| {probe} | {t} | " + " | ".join(_fmt(v) for v in s_scores) +
                         f" | {best} {_fmt(t_scores[best])} | {s_scores[0] - t_scores[best]:+.4f} |")
            rows += 1
    return lines if rows else []


def write_report(out_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.json and report.md. Expected keys: title, models, probes, and optional summary, training,
    plots, notes.

    models: {model: {"kind": "student" | "teacher", ...}}; probes: {probe: {model: {task: result}}} where a result
    is a dict holding a headline metric (top1, miou, exact_match or fidelity) and its baselines; for the
    fidelity probe {probe: {student: {teacher: {"resolutions": [...], "fidelity": [...], ...}}}}.
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
    svt = student_vs_teachers(report)
    if svt:
        lines += ["## Student vs teachers", ""] + svt + [""]
    for probe, per_model in report.get("probes", {}).items():
        lines += [f"## {PROBE_TITLES.get(probe, probe)}", ""]
        lines += _fidelity_tables(per_model) if probe == "fidelity" else _probe_table(probe, per_model) + [""]
    training = report.get("training")
    if training:
        lines += ["## Training", "", "| metric | first | last |", "|---|---|---|"]
        metrics = training.get("metrics", {})
        for k, v in metrics.items():
            if "@" not in k:  # per-resolution copies (`term@RES`) stay in report.json
                lines.append(f"| {k} | {_fmt(v['first'])} | {_fmt(v['last'])} |")
        if any("@" in k for k in metrics):
            lines += ["", "Per-resolution terms (`NAME@RES`) are in report.json."]
        lines.append("")
    plots = report.get("plots", [])
    if plots:
        lines += ["## Plots", ""]
    for p in plots:
        lines += [f"![{Path(p).stem}]({Path(p).name})", ""]
    notes = report.get("notes", [])
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path
