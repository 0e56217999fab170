"""`radio demo`: the whole pipeline on the embedded default data.

synth data -> fit (recipes/demo.yaml) -> export -> kNN of the student and of each teacher -> report.md,
report.json and training-curve PNG in OUT.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import recipes

NOTES = [
    "The teachers are randomly initialised tiny networks (no pretrained weights are reachable offline), so their "
    "summary vectors carry little global information: on this data a global-label kNN sits near chance for "
    "teachers and student alike, while colour is local and easier. Fidelity to the teachers (the validation "
    "loss terms) is the informative measure of distillation here.",
    "kNN: L2-normalized summary vectors, cosine similarity, k = 20, T = 0.07, votes exp(sim / T) per class.",
]


def run_demo(out: str | Path = "runs/demo", count: int = 1000, steps: int | None = None,
             progress: bool = True, extra_args: list[str] | None = None) -> Path:
    """Run the demo; returns the path of report.md."""
    from eval.datasets import read_info, shard_label_classes
    from eval.options import EvalOptions
    from eval.report import plot_training_curves, read_metrics_csv, write_report
    from eval.run import Evaluation
    from radio.cli.fit import run_fit
    from radio.data.synth import write_synth
    from radio.export import export_checkpoint

    out = Path(out).resolve()
    t0 = time.time()
    data = out / "data"
    print(f"[1/5] generating {count} training + {max(1, count // 4)} validation images in {data}", flush=True)
    if data.exists():
        shutil.rmtree(data)
    write_synth(data, count, progress=progress)

    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"[2/5] distilling (recipe {recipes.path('demo')}) into {run_dir}", flush=True)
    args = ["--config", str(recipes.path("demo")), "--data.shards", str(data / "train"),
            "--data.val_shards", str(data / "val"), "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir),
            "--trainer.enable_progress_bar", str(progress).lower()]
    if steps:
        args += ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(max(1, steps // 3))]
    cli = run_fit(args + list(extra_args or []))
    trainer = cli.trainer
    callback = trainer.checkpoint_callback  # the recipe's ModelCheckpoint
    ckpt = callback.last_model_path if callback else ""  # type: ignore[attr-defined]
    if not ckpt or not Path(ckpt).is_file():
        found = sorted(run_dir.rglob("last*.ckpt"))
        if not found:
            raise FileNotFoundError(f"no checkpoint written under {run_dir}")
        ckpt = str(found[-1])

    student_dir = out / "student"
    print(f"[3/5] exporting {ckpt} -> {student_dir}", flush=True)
    export_checkpoint(ckpt, student_dir)

    resolution = int(cli.datamodule.resolution)
    fields = shard_label_classes(read_info(data))
    teacher_names = [e.name for e in cli.model.entries]
    print(f"[4/5] kNN on {', '.join(fields)}: student and teachers {', '.join(teacher_names)}", flush=True)
    specs = [str(student_dir)] + [f"{student_dir}::{n}" for n in teacher_names]
    opts = EvalOptions(resolution=resolution, progress=progress, pca_images=0)
    knn = Evaluation(["knn"], specs, str(data), out, opts, names=["student"]).measure()
    models = {name: {k: v for k, v in d.items() if k != "skipped_samples"}
              for name, d in knn["models"].items()}
    report: dict[str, Any] = {"title": "radio demo report", "models": models,
                              "probes": {"knn": knn["probes"]["knn"]}}

    print("[5/5] writing the report", flush=True)
    log_dir = Path(trainer.logger.log_dir)  # type: ignore[union-attr,arg-type]  # the recipe's CSVLogger
    metrics_csv = log_dir / "metrics.csv"
    plots = []
    training: dict[str, Any] = {"checkpoint": ckpt, "steps": int(trainer.global_step), "metrics": {}}
    if metrics_csv.is_file():
        png = plot_training_curves(metrics_csv, out / "loss_curve.png")
        if png:
            plots.append(str(png))
        for k, series in read_metrics_csv(metrics_csv).items():
            if k.startswith(("train/", "val/")) and not k.endswith("_epoch"):
                training["metrics"][k] = {"first": series[0][1], "last": series[-1][1], "points": len(series)}
    fidelity_lines = _training_fidelity(log_dir, out, report, resolution)
    report["training"] = training
    report["plots"] = plots
    report["notes"] = NOTES
    report["elapsed_s"] = round(time.time() - t0, 1)
    report["summary"] = (f"Distilled {len(teacher_names)} teachers ({', '.join(teacher_names)}) into a student for "
                         f"{trainer.global_step} steps on {count} generated images in {report['elapsed_s']} s.")
    _, md = write_report(out, report)
    if fidelity_lines:
        with open(md, "a") as f:
            f.write("\n".join(["## Fidelity vs resolution (validation during training)", "", *fidelity_lines,
                               "![fidelity](fidelity.png)", ""]))
    return md


def _training_fidelity(log_dir: Path, out: Path, report: dict[str, Any],
                       resolution: int) -> list[str]:
    """Copy the run's fidelity.json/png into the report; returns the markdown section's lines (none if absent)."""
    import json

    from radio.fidelity import fidelity_markdown

    src = log_dir / "fidelity.json"
    if not src.is_file():
        return []
    records = json.loads(src.read_text())
    report["training_fidelity"] = records
    if (log_dir / "fidelity.png").is_file():
        shutil.copy(log_dir / "fidelity.png", out / "fidelity.png")
    return fidelity_markdown(records, primary=resolution)
