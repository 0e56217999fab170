"""Cost of the demo's teachers: each teacher's forward, and a demo training step with and without the SAM teacher.

Both variants are built from recipes/demo.yaml and timed in alternation in one process (so that load from other
processes hits both alike); the ratio is printed last.

    PYTHONPATH=$PWD python benchmarks/demo_teachers.py [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import yaml

import recipes
import teachers
from radio.train.module import DistillModule


def _module(model_cfg: dict, keep: set[str]) -> DistillModule:
    cfg = copy.deepcopy(model_cfg)
    cfg["teachers"] = [t for t in cfg["teachers"] if t["name"] in keep]
    return DistillModule(**cfg)


def _step(module: DistillModule, opt: torch.optim.Optimizer, images: torch.Tensor) -> float:
    t0 = time.perf_counter()
    loss, _ = module.distill_losses(images)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load(open(recipes.path("demo")))
    res, bs = int(cfg["data"]["resolution"]), int(cfg["data"]["batch_size"])
    grid = (res // cfg["model"]["student"]["patch_size"],) * 2
    images = torch.rand(bs, 3, res, res, generator=torch.Generator().manual_seed(0))

    print(f"teacher forwards, batch {bs} (threads {a.threads}):")
    for spec in cfg["model"]["teachers"]:
        t = teachers.build(spec)
        x = torch.nn.functional.interpolate(images, t.resolution_for(grid), mode="bilinear")
        t(x)
        times = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            t(x)
            times.append(time.perf_counter() - t0)
        print(f"  {spec['name']:8s} {statistics.median(times) * 1e3:7.1f} ms  input {tuple(x.shape[-2:])} "
              f"-> features {tuple(t(x[:1]).features.shape[1:])}")

    names = {t["name"] for t in cfg["model"]["teachers"]}
    variants = {"without sam": _module(cfg["model"], names - {"sam"}), "with sam": _module(cfg["model"], names)}
    opts = {k: torch.optim.AdamW(m.model.parameters(), lr=1e-4) for k, m in variants.items()}
    for k, m in variants.items():  # warm-up
        m.train()
        _step(m, opts[k], images)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for k, m in variants.items():
            times[k].append(_step(m, opts[k], images))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"training step {k:12s} {v * 1e3:7.1f} ms (median of {a.rounds})")
    print(f"ratio with / without sam: {med['with sam'] / med['without sam']:.2f}")


if __name__ == "__main__":
    main()
