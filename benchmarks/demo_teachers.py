"""Cost of the demo's teachers: each teacher's forward, and a demo training step with and without the SAM teacher.

Both variants are built from recipes/demo.yaml and timed in alternation in one process (so that load from other
processes hits both alike); the ratio is printed last. The batch is the demo's final stage (its partitions, e.g.
24 x 128 px + 16 x 64 px, random images); the training step is benchmarks/_bench.train_step (every partition's
teacher targets as training computes them, mosaic included; student forward/backward; AdamW), and the teacher
forwards are timed on the first partition's images.

    PYTHONPATH=$PWD python benchmarks/demo_teachers.py [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench

from radio.data.batch import Partition, TrainBatch
from radio.train.module import DistillModule


def _module(model_cfg: dict, keep: set[str]) -> DistillModule:
    cfg = copy.deepcopy(model_cfg)
    cfg["teachers"] = [t for t in cfg["teachers"] if t["name"] in keep]
    return DistillModule(**cfg)


def _step(module: DistillModule, opt: torch.optim.Optimizer, batch: dict) -> float:
    return _bench.timed(lambda: _bench.train_step(module, opt, batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(_bench.machine())
    cfg = _bench.demo_recipe()
    parts = _bench.demo_stages()[-1]["partitions"]
    g = torch.Generator().manual_seed(0)
    batch = TrainBatch([Partition(torch.rand(p["batch_size"], 3, p["resolution"], p["resolution"],
                                             generator=g), p.get("teachers"), float(p.get("weight", 1.0)))
                        for p in parts])
    images = batch.partitions[0].image
    bs, res = images.shape[0], images.shape[-1]
    grid = (res // cfg["model"]["student"]["patch_size"],) * 2

    names = {t["name"] for t in cfg["model"]["teachers"]}
    variants = {"without sam": _module(cfg["model"], names - {"sam"}), "with sam": _module(cfg["model"], names)}
    print(f"teacher forwards, batch {bs} at {res} px (threads {a.threads}):")
    for spec in cfg["model"]["teachers"]:  # the teachers as the module built them
        t = variants["with sam"].teachers[spec["name"]]
        x = torch.nn.functional.interpolate(images, t.resolution_for(grid), mode="bilinear")
        t(x)
        times = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            t(x)
            times.append(time.perf_counter() - t0)
        print(f"  {spec['name']:8s} {statistics.median(times) * 1e3:7.1f} ms  input {tuple(x.shape[-2:])} "
              f"-> features {tuple(t(x[:1]).features.shape[1:])}")

    opts = {k: torch.optim.AdamW(m.model.parameters(), lr=1e-4) for k, m in variants.items()}
    for k, m in variants.items():  # warm-up
        m.train()
        _step(m, opts[k], batch)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for k, m in variants.items():
            times[k].append(_step(m, opts[k], batch))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"training step {k:12s} {v * 1e3:7.1f} ms (median of {a.rounds}, {_bench.stage_label(parts)})")
    print(f"load average {_bench.load():.2f}")
    print(f"ratio with / without sam: {med['with sam'] / med['without sam']:.2f}")


if __name__ == "__main__":
    main()
