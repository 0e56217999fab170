"""Mosaic vs running the high-resolution teacher once per low-resolution image: SAM's time per sample, in one run.

    PYTHONPATH=$PWD python benchmarks/mosaic.py [--rounds 3] [--threads 1]

One thread by default: on the shared 2-core machine, 2-thread rounds of the same case varied by an order of
magnitude (another job holding a core stalls every OpenMP barrier); 1-thread rounds were far steadier.

The teacher is segment_anything's `ImageEncoderViT` with the real vit_b configuration (width 768, depth 12, 12
heads, windows of 14, global attention in blocks 2, 5, 8, 11, 256-d neck), randomly initialised, on a 512 px
canvas smaller than SAM's 1024 px so that a CPU run stays short (one vit_b forward at 512 px takes
2-4 s on the 2-core development CPU). Student partitions (patch 16): 208 px on a 512 px canvas, batch 4 (grid 13,
2 x 2 tiles of 13 cells in 16-cell tiles: the 432-in-1024 case of DESIGN.md scaled by 1/2), and 64 px on a 256 px
canvas, batch 16 (grid 4, 4 x 4 tiles: the 256-in-1024 case scaled by 1/4). The demo's tiny SAM (128 px canvas)
at 64 px (2 x 2) is measured too. Per canvas both sides pay the same forward, so the ratio is about B /
canvases less the mosaic's own cost (padding, cropping); the canvas size hardly matters to it.
Both sides go through the training loop's own code (radio.train.targets.teacher_targets):
without mosaic every image is resized to the canvas and the teacher runs on a batch of B canvases; with mosaic
it runs on ceil(B / k^2) canvases and each tile's features are cropped back. Timed in alternation (A, B, A,
B ...) after a warm-up; medians and the median of the per-round ratios are printed, the ratio last (goal: close
to k^2, at least 3 at k = 2).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench

import teachers
from radio.train.targets import mosaic_plan, teacher_targets


def sam_b(canvas: int) -> dict:
    """segment_anything's vit_b image encoder (random init) on a smaller canvas than SAM's 1024 px."""
    return {"name": "sam", "model": "vit_b", "pretrained": False, "arch": {"img_size": canvas}}


def demo_sam() -> dict:
    spec = next(t for t in _bench.demo_recipe()["model"]["teachers"] if t["name"] == "sam")
    return {k: v for k, v in spec.items() if k not in ("normalizer", "mosaic", "summary_weight", "feature_weight")}


def compare(teacher: teachers.Teacher, resolution: int, batch: int, rounds: int) -> dict:
    grid = (resolution // 16,) * 2
    plan = mosaic_plan(teacher, grid)
    if plan is None:
        raise ValueError(f"no mosaic fits a {resolution} px partition in a {teacher.input_size} px canvas")
    images = torch.rand(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))

    def per_image() -> None:
        teacher_targets(teacher, images, grid, mosaic=False)

    def mosaic() -> None:
        teacher_targets(teacher, images, grid, mosaic=True)

    per_image(), mosaic()  # warm-up
    a, b, loads = [], [], [_bench.load()]
    for _ in range(rounds):
        a.append(_bench.timed(per_image))
        b.append(_bench.timed(mosaic))
        loads.append(_bench.load())
    speedup, lo, hi = _bench.paired(b, a)  # per-image time / mosaic time, per round
    return {"k": plan.tiles, "canvases": (batch, plan.num_canvases(batch)), "per_image_s": _bench.median(a) / batch,
            "mosaic_s": _bench.median(b) / batch, "speedup": speedup, "range": (lo, hi),
            "load": (min(loads), max(loads))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(_bench.machine())
    t0 = time.time()
    cases = [("SAM vit_b, 512 px canvas", sam_b(512), 208, 4, a.rounds),
             ("SAM vit_b, 256 px canvas", sam_b(256), 64, 16, a.rounds),
             ("demo's tiny SAM, 128 px canvas", demo_sam(), 64, 32, 4 * a.rounds)]
    built: dict[str, teachers.Teacher] = {}
    rows = []
    for label, spec, res, batch, rounds in cases:
        if label not in built:
            built[label] = teachers.build(spec)
        r = compare(built[label], res, batch, rounds)
        r["label"], r["res"] = label, res
        rows.append(r)
        k = r["k"]
        print(f"{label}, student {res} px, batch {batch}: {k[0]} x {k[1]} tiles per canvas, canvases "
              f"{r['canvases'][0]} -> {r['canvases'][1]}; teacher time per sample {r['per_image_s'] * 1e3:.1f} ms "
              f"per image vs {r['mosaic_s'] * 1e3:.1f} ms mosaic (medians of {rounds}), speed-up "
              f"{r['speedup']:.2f}x (rounds {r['range'][0]:.2f}-{r['range'][1]:.2f}); load "
              f"{r['load'][0]:.2f}-{r['load'][1]:.2f}", flush=True)
    print(f"total {time.time() - t0:.0f} s")
    for r in rows:
        k = r["k"]
        print(f"ratio per-image / mosaic teacher time per sample, {r['label']}, {r['res']} px (k = {k[0]}, "
              f"{k[0] * k[1]} tiles): {r['speedup']:.2f}")


if __name__ == "__main__":
    main()
