"""Token merging (ToMe) on the student: throughput and fidelity to each teacher, against r = 0, in one run.

    PYTHONPATH=$PWD python benchmarks/tome.py [--student EXPORT_DIR] [--quick]

Part 1, throughput: a randomly initialised ViT-B/16-shaped student (RADIOModel, two summary teachers, prefix of
8 tokens = 2 summary tokens + 6 registers), float32 on the CPU, `torch.set_num_threads(2)`, inference mode, at
224 and 432 px, for in-network merging (r per block, constant and decreasing schedules) and for output
budgets (one merge after the encoder). Every case is warmed up, then the cases are timed in interleaved
pairs: r = 0, then the case, back to back, so both see about the same load from other processes; the
speed-up is the median over rounds of the ratio within a pair (min-max over rounds shown).

Part 2, fidelity: random weights say nothing about fidelity, so a tiny student (width 64, depth 12, heads 4,
patch 16, same 8-token prefix so the token counts per r are those of part 1) is distilled briefly at 224 px
from two randomly initialised tiny teachers of the demo's families (open_clip CLIP, timm DINOv2), or taken
from --student. Fidelity = Var(teacher) / MSE(student adaptor, teacher) on the feature grid (radio.losses),
on generated validation images, for the features (grid) and the summary vector.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from radio.model import ModelConfig, RADIOModel, StudentConfig, TeacherHead
from radio.tome import merge_schedule, merge_wavg, tokens_per_layer


@dataclass(frozen=True)
class Case:
    r: int = 0
    schedule: str = "constant"
    num_tokens: int | None = None

    @property
    def label(self) -> str:
        if self.num_tokens is not None:
            return f"budget {self.num_tokens}"
        return "r=0 (baseline)" if self.r == 0 else f"r={self.r} {self.schedule}"


CASES = {
    224: [Case(), Case(4), Case(8), Case(12), Case(16), Case(8, "decreasing"), Case(12, "decreasing"),
          Case(num_tokens=128), Case(num_tokens=64)],
    432: [Case(), Case(16), Case(32), Case(48), Case(56), Case(32, "decreasing"), Case(48, "decreasing"),
          Case(num_tokens=256), Case(num_tokens=128), Case(num_tokens=64)],
}


def token_stats(case: Case, grid: int, prefix: int, depth: int, dim: int, patch: int) -> dict:
    """Tokens left, mean tokens per block (attention and MLP counts averaged) and analytic GFLOPs per image."""
    n = prefix + grid * grid
    sched = merge_schedule(depth, case.r, case.schedule)
    outs = tokens_per_layer(n, sched, prefix)
    ins = [n] + outs[:-1]
    flops = 2 * grid * grid * 3 * patch * patch * dim
    for a, m in zip(ins, outs):  # qkv + proj, QK^T + AV, MLP (ratio 4)
        flops += 2 * (4 * a * dim * dim + 2 * a * a * dim + 8 * m * dim * dim)
    mean = sum(a + m for a, m in zip(ins, outs)) / (2 * depth)
    return {"final_tokens": case.num_tokens if case.num_tokens else outs[-1] - prefix,
            "mean_tokens_frac": mean / n, "gflops": flops / 1e9}


def vit_b_student() -> RADIOModel:
    cfg = ModelConfig(StudentConfig(arch="vit_base", patch_size=16, max_resolution=512, register_multiple=8),
                      [TeacherHead("clip", 512, 512), TeacherHead("dino_v2", 768, 768)])
    return RADIOModel(cfg).eval()


def run(model: RADIOModel, x: torch.Tensor, case: Case) -> torch.Tensor:
    model.set_token_merging(r=case.r, schedule=case.schedule)
    return model(x, num_tokens=case.num_tokens).features


@torch.inference_mode()
def throughput(res: int, batch: int, rounds: int) -> list[dict]:
    """img/s per case and its speed-up over r = 0, timed in pairs (r = 0, then the case, back to back).

    The machine is shared, so each case's ratio is the median over rounds of the ratio within a pair (both
    runs see about the same load), and its img/s is the median over rounds.
    """
    torch.manual_seed(0)
    model = vit_b_student()
    x = torch.rand(batch, 3, res, res)
    cases = CASES[res]
    base = cases[0]

    def timed(c: Case) -> float:
        t0 = time.perf_counter()
        run(model, x, c)
        return time.perf_counter() - t0

    for c in cases:
        run(model, x, c)  # warm-up
    times: dict[Case, list[float]] = {c: [] for c in cases}
    ratios: dict[Case, list[float]] = {c: [] for c in cases}
    for _ in range(rounds):
        for c in cases[1:]:
            tb, tc = timed(base), timed(c)
            times[base].append(tb)
            times[c].append(tc)
            ratios[c].append(tb / tc)
    bb = model.backbone
    rows = []
    for c in cases:
        rows.append({"res": res, "case": c.label, "img_s": batch / statistics.median(times[c]),
                     "speedup": statistics.median(ratios[c]) if c != base else 1.0,
                     "speedup_range": [min(ratios[c]), max(ratios[c])] if c != base else [1.0, 1.0],
                     **token_stats(c, res // 16, bb.num_prefix_tokens, len(bb.blocks), bb.embed_dim, 16)})
    return rows


def profile(res: int, batch: int, case: Case, top: int = 12) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    torch.manual_seed(0)
    model = vit_b_student()
    x = torch.rand(batch, 3, res, res)
    with torch.inference_mode():
        run(model, x, case)
        with prof(activities=[ProfilerActivity.CPU]) as p:
            run(model, x, case)
    return p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


# -- part 2: fidelity of a distilled tiny student --------------------------------------------------------------

TINY_TEACHERS = [
    {"name": "clip", "model": "ViT-B-16", "pretrained": False, "seed": 1,
     "arch": {"embed_dim": 64, "vision_cfg": {"image_size": 224, "layers": 3, "width": 96, "head_width": 32,
                                              "patch_size": 16},
              "text_cfg": {"width": 64, "heads": 2, "layers": 1}}},
    {"name": "dino_v2", "model": "vit_small_patch14_dinov2", "pretrained": False, "seed": 2,
     "arch": {"embed_dim": 96, "depth": 3, "num_heads": 3, "img_size": 224}},
]
TINY_STUDENT = {"arch": "custom", "embed_dim": 64, "depth": 12, "num_heads": 4, "patch_size": 16,
                "register_multiple": 8, "max_resolution": 448}


def distill_tiny_student(out: Path, steps: int) -> Path:
    """Synth data -> short `radio fit` of the tiny student -> export; returns the export directory."""
    import yaml

    from radio.cli.fit import run_fit
    from radio.data.synth import write_synth
    from radio.export import export_checkpoint

    data = out / "data"
    if not (data / "info.json").is_file():
        write_synth(data, 512, val_count=64, size=224, shard_size=128, progress=False)
    recipe = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": steps,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "log_every_n_steps": 10,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(out),
                    "logger": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(out / "ckpt"), "save_last": True}}]},
        "model": {"student": TINY_STUDENT, "teachers": TINY_TEACHERS,
                  "optimizer": {"lr": 2e-3, "warmup_steps": 20}},
        "data": {"shards": str(data / "train"), "resolution": 224, "batch_size": 12, "num_workers": 1},
    }
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    cli = run_fit(["--config", str(out / "recipe.yaml")])
    return export_checkpoint(cli.trainer.checkpoint_callback.last_model_path, out / "student")


def val_images(count: int, res: int) -> torch.Tensor:
    from radio.data.synth import generate

    imgs = [torch.from_numpy(generate(i, split="val", size=res).image) for i in range(count)]
    return torch.stack(imgs).permute(0, 3, 1, 2).float() / 255.0


@torch.inference_mode()
def fidelity_table(student_dir: Path, cases: list[Case], count: int) -> list[dict]:
    import radio
    import teachers as teacher_lib
    from radio.data.transforms import resize_images
    from radio.fidelity import fidelity
    from radio.losses import match_grids, tokens_to_grid

    model = radio.load(student_dir)
    specs = model.provenance.get("teacher_specs") or []
    if not specs:
        raise SystemExit(f"{student_dir}: no teacher_specs in config.json provenance; cannot rebuild teachers")
    tlist = {s["name"]: teacher_lib.build(s) for s in specs}
    x = val_images(count, 224)
    targets = {}
    grid = (14, 14)
    for name, t in tlist.items():
        targets[name] = t(resize_images(x, t.resolution_for(grid)))
    rows = []
    for c in cases:
        model.set_token_merging(r=c.r, schedule=c.schedule)
        tokens = model.forward_tokens(x)
        row = {"case": c.label}
        unmerge = None
        if c.num_tokens is not None:
            merge, unmerge = model.output_merge(tokens, c.num_tokens)
        for name, target in targets.items():
            pred = model.adapt(name, tokens)
            feats = pred.features
            if unmerge is not None:  # compressed, then every grid position takes its group's value
                feats = unmerge(merge_wavg(merge, feats)[0])
            pf, tf = match_grids(tokens_to_grid(feats, tokens.grid), target.features)
            row[f"{name}/fidelity"] = float(fidelity(pf, tf))
            if pred.summary is not None and target.summary is not None:
                row[f"{name}/summary"] = float(fidelity(pred.summary, target.summary))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", type=Path, default=None,
                    help="export of a distilled student for part 2 (default: train the tiny one, cached in --out)")
    ap.add_argument("--out", type=Path, default=Path("runs/tome_bench"))
    ap.add_argument("--steps", type=int, default=200, help="distillation steps of the tiny student")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per case")
    ap.add_argument("--quick", action="store_true", help="1 round, 224 px only, 16 fidelity images")
    ap.add_argument("--profile", action="store_true", help="profile r=0 and r=16 at 224 px (top ops)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, CPU; "
          f"load average at start {os.getloadavg()[0]:.1f}")

    print("\n== Part 1: throughput, random-init ViT-B/16-shaped student (prefix 8 tokens) ==")
    rows = []
    for res, batch, rounds in ((224, 8, a.rounds + 1), (432, 2, a.rounds))[: 1 if a.quick else 2]:
        rows += throughput(res, batch, 1 if a.quick else rounds)
        print(f"  {res} px done (batch {batch}), {time.time() - t_start:.0f} s")
    print(f"{'res':>4} {'case':<18} {'tokens out':>10} {'mean tok/blk':>12} {'GFLOPs':>7} {'img/s':>7} "
          f"{'vs r=0':>7} {'(min-max)':>11}")
    for r in rows:
        lo, hi = r["speedup_range"]
        print(f"{r['res']:>4} {r['case']:<18} {r['final_tokens']:>10} {r['mean_tokens_frac']:>11.0%} "
              f"{r['gflops']:>7.1f} {r['img_s']:>7.2f} {r['speedup']:>6.2f}x {lo:>5.2f}-{hi:.2f}")

    if a.profile:
        for case in (Case(), Case(16)):
            print(f"\n-- profile 224 px, batch 8, {case.label} --")
            print(profile(224, 8, case))

    print("\n== Part 2: fidelity to each teacher, distilled tiny student at 224 px (196 patches + 8 prefix) ==")
    student = a.student
    if student is None:
        student = a.out / "student"
        if not (student / "config.json").is_file():
            print(f"  distilling the tiny student for {a.steps} steps into {a.out} ...", flush=True)
            t0 = time.time()
            distill_tiny_student(a.out, a.steps)
            print(f"  distilled in {time.time() - t0:.0f} s")
        else:
            print(f"  reusing {student} (delete it to retrain)")
    cases = [c for c in CASES[224]]
    fid = fidelity_table(student, cases, 16 if a.quick else 64)
    keys = [k for k in fid[0] if k.endswith("/fidelity")]  # summary fidelity: in results.json only
    print(f"{'case':<18} " + " ".join(f"{k:>20}" for k in keys))
    base = fid[0]
    for r in fid:
        print(f"{r['case']:<18} " + " ".join(f"{r[k]:>11.4g} ({r[k] / base[k]:>5.1%})" for k in keys))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps({"throughput": rows, "fidelity": fid}, indent=2))
    print(f"\nwrote {a.out / 'results.json'}; total {time.time() - t_start:.0f} s; "
          f"load average at end {os.getloadavg()[0]:.1f}")
    # last: the measure, throughput where merging halves the tokens per block (the case closest to 50 %)
    for res in sorted({r["res"] for r in rows}):
        half = min((r for r in rows if r["res"] == res and r["mean_tokens_frac"] < 1),
                   key=lambda r: abs(r["mean_tokens_frac"] - 0.5))
        print(f"ratio merged / r=0 throughput at {res} px, {half['case']} ({half['mean_tokens_frac']:.0%} tokens per "
              f"block): {half['speedup']:.2f}")


if __name__ == "__main__":
    main()
