"""Ablations on the demo protocol (tiny random teachers, CPU, one fixed step budget), side by side in one run.

A. Normalization: the same student, teachers, data and steps with the teachers' features normalized by none,
   global_std, channel_std, pca_whiten and phis (all with the MSE feature loss), plus AM-RADIO's
   none + cos/smooth-L1, trained at one resolution (`--a-resolution`, default 64 px to fit a shared 2-core CPU).
   Reported: per-teacher fidelity (teacher space) at the training resolution, the spread between teachers
   (max / min fidelity) and their geometric mean.
B. Resolution: single-resolution training at 128 px, at 64 px, and multi-resolution (64 px for the first third of
   the steps, then 64 + 128 px partitions in every step), all PHI-S + MSE. Reported: fidelity per teacher at
   64 ... 192 px, the spread max_r F / min_r F over those resolutions, and the worst ratio, over resolutions,
   of a run's fidelity to the best run's at that resolution (1 = never beaten; the mode-switch measure).

Every run starts from recipes/demo.yaml and changes only what the ablation names. Fidelity is measured on the
validation split at the end (and half way, to show it rising). Runs are repeatable (seeded epoch order); `--seed`
changes the student's initialisation and the data order and augmentation together (the teachers keep their own
seeds), to see how much of a difference between runs is the seed.

    PYTHONPATH=$PWD python benchmarks/ablations.py [--steps 150] [--only A|B] [--a-resolution 64] [--seed 0]
        [--estimate-steps N]
        [--out runs/ablations]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

import recipes

EVAL_RES = [64, 96, 128, 160, 192]


def base_recipe(data: Path, root: Path, steps: int, seed: int = 0,
                estimate_steps: int | None = None) -> dict[str, Any]:
    r = yaml.safe_load(recipes.path("demo").read_text())
    r["seed_everything"] = seed  # the student's initialisation
    t = r["trainer"]
    t.update(max_steps=steps, val_check_interval=steps // 2, enable_progress_bar=False, enable_model_summary=False,
             default_root_dir=str(root), limit_val_batches=4)
    t["logger"]["init_args"]["save_dir"] = str(root)
    t["callbacks"] = []
    t["enable_checkpointing"] = False
    r["data"].update(shards=str(data / "train"), val_shards=str(data / "val"), val_resolution=max(EVAL_RES),
                     val_batch_size=32, seed=seed)  # the epoch order and augmentation
    r["model"]["validation"] = {"resolutions": EVAL_RES}
    r["model"]["normalization"] = {"estimate_steps": estimate_steps or max(1, steps // 3)}
    return r


def with_normalizer(r: dict[str, Any], normalizer: str, loss: str) -> dict[str, Any]:
    r = copy.deepcopy(r)
    for t in r["model"]["teachers"]:
        t["normalizer"] = normalizer
    r["model"]["loss"] = {"feature": loss}
    return r


def with_stages(r: dict[str, Any], stages: list[dict[str, Any]]) -> dict[str, Any]:
    r = copy.deepcopy(r)
    r["data"].pop("resolution", None)
    r["data"].pop("batch_size", None)
    r["data"]["stages"] = stages
    return r


def runs(data: Path, out: Path, steps: int, only: str | None, a_res: int,
         seed: int = 0, estimate_steps: int | None = None) -> dict[str, dict[str, Any]]:
    plan: dict[str, dict[str, Any]] = {}
    base = lambda name: base_recipe(data, out / name, steps, seed, estimate_steps)  # noqa: E731
    if only in (None, "A"):
        single = [{"partitions": [{"resolution": a_res, "batch_size": 32}]}]
        for norm in ("none", "global_std", "channel_std", "pca_whiten", "phis"):
            plan[f"A/{norm}+mse"] = with_stages(with_normalizer(base(f"A_{norm}"), norm, "mse"), single)
        plan["A/none+cos_smoothl1"] = with_stages(with_normalizer(base("A_none_cos"), "none", "cos_smoothl1"),
                                                  single)
    if only in (None, "B"):
        third = max(1, steps // 3)
        plan["B/single@128"] = with_stages(with_normalizer(base("B_single128"), "phis", "mse"),
                                           [{"partitions": [{"resolution": 128, "batch_size": 32}]}])
        plan["B/single@64"] = with_stages(with_normalizer(base("B_single64"), "phis", "mse"),
                                          [{"partitions": [{"resolution": 64, "batch_size": 32}]}])
        plan["B/multi 64->64+128"] = with_stages(
            with_normalizer(base("B_multi"), "phis", "mse"),
            [{"steps": third, "partitions": [{"resolution": 64, "batch_size": 32}]},
             {"partitions": [{"resolution": 64, "batch_size": 16}, {"resolution": 128, "batch_size": 24}]}])
    return plan


def run_one(name: str, recipe: dict[str, Any], out: Path) -> dict[str, Any]:
    from radio.cli.fit import run_fit

    root = Path(recipe["trainer"]["default_root_dir"])
    root.mkdir(parents=True, exist_ok=True)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    t0 = time.time()
    cli = run_fit(["--config", str(path)])
    wall = time.time() - t0
    records = json.loads((Path(cli.trainer.logger.log_dir) / "fidelity.json").read_text())
    parts = [p for s in (recipe["data"].get("stages") or []) for p in s["partitions"]]
    images = sum(p["batch_size"] for p in parts) if parts else recipe["data"]["batch_size"]
    return {"name": name, "wall_s": round(wall, 1), "records": records, "steps": int(cli.trainer.global_step),
            "images_last_step": images}


def fid(result: dict[str, Any], teacher: str, res: int, which: int = -1) -> float:
    return result["records"][which]["teachers"][teacher][str(res)]["fidelity"]


def table_a(results: list[dict[str, Any]], teachers: list[str], res: int) -> list[str]:
    lines = ["| run | " + " | ".join(f"{t} fidelity@{res}" for t in teachers) +
             " | spread (max/min) | geo-mean | wall s |", "|---|" + "---|" * (len(teachers) + 3)]
    for r in results:
        vals = [fid(r, t, res) for t in teachers]
        first = [fid(r, t, res, 0) for t in teachers]
        geo = math.exp(sum(math.log(v) for v in vals) / len(vals))
        cells = [f"{f:.3f} -> **{v:.3f}**" for f, v in zip(first, vals)]
        lines.append(f"| {r['name']} | " + " | ".join(cells) +
                     f" | {max(vals) / min(vals):.3f} | {geo:.3f} | {r['wall_s']} |")
    return lines


def table_b(results: list[dict[str, Any]], teachers: list[str]) -> list[str]:
    """Fidelity per resolution; the gap max_r F / min_r F; and the worst ratio to the best run at each r."""
    best = {(t, res): max(fid(r, t, res) for r in results) for t in teachers for res in EVAL_RES}
    lines = ["| run | teacher | " + " | ".join(f"{r} px" for r in EVAL_RES) +
             " | gap max/min | worst F / best-run F | wall s |", "|---|---|" + "---|" * (len(EVAL_RES) + 3)]
    for r in results:
        for t in teachers:
            vals = [fid(r, t, res) for res in EVAL_RES]
            worst = min(v / best[(t, res)] for v, res in zip(vals, EVAL_RES))
            lines.append(f"| {r['name']} | {t} | " + " | ".join(f"{v:.3f}" for v in vals) +
                         f" | {max(vals) / min(vals):.3f} | {worst:.3f} | {r['wall_s']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--only", choices=["A", "B"], default=None)
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--a-resolution", type=int, default=64, choices=EVAL_RES)
    ap.add_argument("--count", type=int, default=1000, help="training images (validation: count / 4)")
    ap.add_argument("--seed", type=int, default=0, help="student initialisation and data seed (default 0)")
    ap.add_argument("--estimate-steps", type=int, default=None,
                    help="steps over which the normalizers estimate their statistics (default: steps // 3)")
    ap.add_argument("--tables", action="store_true", help="only print the tables of earlier results in --out")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    if a.tables:
        results = [r for f in sorted(out.glob("results_*.json")) for r in json.loads(f.read_text())]
        print_tables(results, a.steps, a.a_resolution)
        return
    import torch

    from radio.data.synth import write_synth

    torch.set_num_threads(2)
    data = out / "data"
    if not (data / "info.json").is_file():
        write_synth(data, a.count, progress=False)
    plan = runs(data, out, a.steps, a.only, a.a_resolution, a.seed, a.estimate_steps)
    results = []
    for name, recipe in plan.items():
        print(f"== {name}", flush=True)
        results.append(run_one(name, recipe, out))
        (out / f"results_{a.only or 'all'}.json").write_text(json.dumps(results, indent=2))
    print_tables(results, a.steps, a.a_resolution)


def print_tables(results: list[dict[str, Any]], steps: int, a_res: int) -> None:
    teachers = list(results[0]["records"][-1]["teachers"])
    print(f"\n{steps} steps each; fidelity = Var(teacher)/MSE in the teacher's space on the validation split\n")
    a_runs = [r for r in results if r["name"].startswith("A/")]
    b_runs = [r for r in results if r["name"].startswith("B/")]
    if a_runs:
        print("A. normalization (first -> last validation)\n")
        print("\n".join(table_a(a_runs, teachers, a_res)) + "\n")
    if b_runs:
        print("B. resolution (last validation)\n")
        print("\n".join(table_b(b_runs, teachers)) + "\n")


if __name__ == "__main__":
    main()
