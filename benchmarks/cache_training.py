"""Training step with the teachers online vs read from the feature cache, side by side in one process.

Teachers: open_clip ViT-B-16 (fixed 224 px, 14 x 14 cells) and timm DINOv2 ViT-S/14 (dynamic: 196 px for the
14 x 14 student grid), both randomly initialised at their real sizes; student: a small ViT (width 192, depth 4, patch 16)
at 224 px. Generated images (`radio data synth`, 224 px) are cached once with `cache_teachers` (fp16); then one
datamodule streams batches with online targets and one with cached targets (patch-aligned crops), and training
steps (batch loading + targets + student forward/backward + AdamW) are timed in alternation. Printed: caching cost
per image, storage per image per teacher (the metadata's tensor bytes, and the bytes on disk: every file the cache
wrote, tar headers and metadata included, over the images, beside the image shards' own bytes per image), the
median step of each variant, and last the median over rounds of the per-round ratio cached / online.

    PYTHONPATH=$PWD python benchmarks/cache_training.py [--images 64] [--batch 8] [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

from radio.cache.writer import cache_teachers
from radio.data.datamodule import ShardDataModule
from radio.data.synth import write_synth
from radio.train.module import DistillModule

TEACHERS = [
    {"name": "clip", "model": "ViT-B-16", "pretrained": False, "seed": 1},
    {"name": "dino_v2", "model": "vit_small_patch14_dinov2", "pretrained": False, "seed": 2,
     "arch": {"img_size": 224}},
]
STUDENT = {"arch": "custom", "embed_dim": 192, "depth": 4, "num_heads": 3, "patch_size": 16, "max_resolution": 448}


def _step(module: DistillModule, opt: torch.optim.Optimizer, batches) -> float:
    """Seconds for one step: fetch the next batch (decode, crop, cached reads: num_workers 0) and train on it."""
    return _bench.timed(lambda: _bench.train_step(module, opt, next(batches)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(_bench.machine())
    root = Path(tempfile.mkdtemp(prefix="radio_cache_bench_"))
    write_synth(root / "data", a.images, val_count=0, size=224, shard_size=a.images, progress=False)
    shards = str(root / "data" / "train")

    t0 = time.perf_counter()
    metas = cache_teachers(TEACHERS, shards, root / "cache", (14, 14), batch_size=a.batch, progress=False)
    cache_s = time.perf_counter() - t0
    print(f"cache_teachers: {cache_s:.1f} s for {a.images} images ({cache_s / a.images * 1e3:.0f} ms per image, "
          f"both teachers, threads {a.threads})")
    for name, meta in metas.items():
        print(f"  {name:8s} {meta['resolution'][0]} px, features {meta['features_shape']}, "
              f"{meta['bytes_per_image'] / 1024:.1f} KiB per image ({meta['dtype']})")
    on_disk = sum(f.stat().st_size for f in (root / "cache").rglob("*") if f.is_file())
    images = sum(f.stat().st_size for f in (root / "data" / "train").rglob("*.tar"))
    print(f"on disk: feature cache {on_disk / a.images / 1024:.1f} KiB per image (all teachers, all files), image "
          f"shards {images / a.images / 1024:.1f} KiB per image")

    module = DistillModule(STUDENT, TEACHERS)
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
    common = dict(resolution=224, batch_size=a.batch, num_workers=0)
    loaders = {}
    for key, cache in (("online", None), ("cached", {"dir": str(root / "cache")})):
        dm = ShardDataModule(shards, cache=cache, **common)
        dm.setup("fit")
        loaders[key] = iter(dm.train_dataloader())
    for key in loaders:  # warm-up
        _step(module, opt, loaders[key])
    times: dict[str, list[float]] = {k: [] for k in loaders}
    loads = [_bench.load()]
    for _ in range(a.rounds):
        for key in loaders:
            times[key].append(_step(module, opt, loaders[key]))
        loads.append(_bench.load())
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"training step, teachers {k:6s}: {v * 1e3:8.1f} ms (median of {a.rounds}, batch {a.batch})")
    ratio, lo, hi = _bench.paired(times["online"], times["cached"])
    print(f"load average {min(loads):.2f}-{max(loads):.2f}; per-round ratios {lo:.2f}-{hi:.2f}")
    print(f"ratio cached / online step time: {ratio:.2f}")


if __name__ == "__main__":
    main()
