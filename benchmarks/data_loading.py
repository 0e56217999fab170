"""Data loading: decoded, augmented samples per second per loader worker against what a training step consumes.

    PYTHONPATH=$PWD python benchmarks/data_loading.py [--rounds 4] [--threads 2] [--skip-vitb]

Side A is one loader worker's work: the datamodule's own training pipeline (radio.data.batch.StepStream: the
seeded epoch order, random access by index into the local shards, decode, one seeded random resized crop + flip per
partition and sample, batching), run in this process with `num_workers=0` and one torch thread, as a DataLoader
worker runs (the shard index is built before the timing, as `setup` does once per run). Side B is the training step
that consumes the batch (every partition's teacher targets, student forward/backward, AdamW; no Lightning,
benchmarks/_bench.train_step). Rounds alternate: load a batch (A), train on it (B). The ratio printed is the median
over rounds of (samples/s of one worker) / (samples/s of the step) = t_step / t_load: above 1, one worker keeps up
and the loader is not the bottleneck; the datamodule's `num_workers` multiplies it.

Cases: the demo (recipes/demo.yaml: its model and each of its two stages, on 128 px PNG shards of generated
images); and ViT-B scale: a ViT-B/16 student (RADIOModel, vit_base) with two real-size randomly initialised
teachers (open_clip ViT-B-16 at 224, timm DINOv2 ViT-B/14) at 224 px, batch 8, on 512 px JPEG shards (the size
web-scale shards hold). A 432 px loader rate is also measured, and set against what an H100 would consume for a
ViT-B student alone at 40% model FLOP utilisation (an analytic upper bound, not a measurement: no GPU here).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench

from radio.data.batch import TrainBatch
from radio.data.datamodule import ShardDataModule
from radio.train.module import DistillModule

VITB_STUDENT = {"arch": "vit_base", "patch_size": 16, "register_multiple": 8, "max_resolution": 512}
VITB_TEACHERS = [
    {"name": "clip", "model": "ViT-B-16", "pretrained": False, "seed": 1},
    {"name": "dino_v2", "model": "vit_base_patch14_dinov2", "pretrained": False, "seed": 2,
     "arch": {"img_size": 224}},
]
H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM


def loader(shards: Path, stages: list[dict]):
    dm = ShardDataModule(str(shards), stages=stages, num_workers=0)
    dm.setup("fit")  # the shard index (one header scan), outside the timing
    return iter(dm.train_dataloader())


def samples(batch: TrainBatch) -> int:
    return sum(p.size for p in batch.partitions)


def compare(module: DistillModule | None, batches, rounds: int, threads: int) -> dict[str, Any]:
    """Alternate: load a batch with one thread (A), then a training step on it with `threads` (B)."""
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4) if module is not None else None

    def load_one() -> dict[str, Any]:
        torch.set_num_threads(1)
        try:
            return next(batches)
        finally:
            torch.set_num_threads(threads)

    for _ in range(2):  # warm-up: modules warm
        batch = load_one()
        if module is not None:
            _bench.train_step(module, opt, batch)
    t_load, t_step, loads = [], [], [_bench.load()]
    n = samples(batch)
    for _ in range(rounds):
        t0 = time.perf_counter()
        batch = load_one()
        t_load.append(time.perf_counter() - t0)
        if module is not None:
            t_step.append(_bench.timed(lambda b=batch: _bench.train_step(module, opt, b)))
        loads.append(_bench.load())
    out = {"n": n, "worker_sps": n / _bench.median(t_load), "load": (min(loads), max(loads))}
    if t_step:
        out["step_sps"] = n / _bench.median(t_step)
        out["ratio"], out["lo"], out["hi"] = _bench.paired(t_load, t_step)
    return out


def vit_b_flops(resolution: int, patch: int = 16, dim: int = 768, depth: int = 12, prefix: int = 8) -> float:
    """Analytic forward FLOPs of one image through a ViT-B/16 student (patch embedding, qkv/proj, attention,
    MLP ratio 4; adaptors and norms left out)."""
    g = (resolution // patch) ** 2
    n = g + prefix
    per_block = 2 * (4 * n * dim * dim + 2 * n * n * dim + 8 * n * dim * dim)
    return 2 * g * 3 * patch * patch * dim + depth * per_block


def report(label: str, r: dict[str, Any]) -> None:
    line = f"{label}: one worker {r['worker_sps']:.1f} samples/s"
    if "step_sps" in r:
        line += (f", training step consumes {r['step_sps']:.1f} samples/s; worker / step {r['ratio']:.1f}x "
                 f"(rounds {r['lo']:.1f}-{r['hi']:.1f})")
    print(line + f"; load {r['load'][0]:.2f}-{r['load'][1]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-vitb", action="store_true", help="demo cases only")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(_bench.machine())
    t0 = time.time()
    demo = _bench.demo_recipe()
    module = DistillModule(**demo["model"])
    shards = _bench.synth_shards("synth128", 512)
    rows: list[tuple[str, dict[str, Any]]] = []
    for i, stage in enumerate(_bench.demo_stages()):
        label = f"demo stage {i} ({_bench.stage_label(stage['partitions'])}, 128 px PNG)"
        rows.append((label, compare(module, loader(shards, [stage]), a.rounds, a.threads)))
        report(*rows[-1])
    if not a.skip_vitb:
        jpegs = _bench.jpeg_shards("jpeg512", 256, 512)
        module = DistillModule(VITB_STUDENT, VITB_TEACHERS)
        stage = {"partitions": [{"resolution": 224, "batch_size": 8}]}
        label = "ViT-B/16 student + CLIP ViT-B-16 + DINOv2 ViT-B/14, 8 x 224 px, 512 px JPEG"
        rows.append((label, compare(module, loader(jpegs, [stage]), max(2, a.rounds - 1), a.threads)))
        report(*rows[-1])
        r432 = compare(None, loader(jpegs, [{"partitions": [{"resolution": 432, "batch_size": 32}]}]),
                       a.rounds, a.threads)
        report("loader alone, 32 x 432 px, 512 px JPEG", r432)
        gpu_sps = 0.4 * H100_BF16_FLOPS / (3 * vit_b_flops(432))
        print(f"estimate, not measured: an H100 at 40% MFU trains a ViT-B/16 student alone (no teachers) at 432 px "
              f"at {gpu_sps:.0f} samples/s ({3 * vit_b_flops(432) / 1e9:.0f} GFLOP per sample); one worker here "
              f"makes {r432['worker_sps']:.1f}, so about {gpu_sps / r432['worker_sps']:.0f} workers of this CPU "
              f"would be needed for the student alone", flush=True)
    print(f"total {time.time() - t0:.0f} s")
    for label, r in rows:
        print(f"ratio one worker's samples/s / training step's samples/s, {label}: {r['ratio']:.1f}")


if __name__ == "__main__":
    main()
