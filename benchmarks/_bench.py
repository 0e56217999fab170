"""Small helpers shared by the benchmark scripts (not part of the package): the machine line, load averages,
medians of paired (A, B) timings, and generated shards reused between runs."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "bench"


def load() -> float:
    """1-minute load average."""
    return os.getloadavg()[0]


def machine() -> str:
    """One line: CPU model, cores, torch version and threads, and the load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {load():.2f}")


def demo_recipe() -> dict:
    """recipes/demo.yaml as a dict."""
    import yaml

    import recipes

    return yaml.safe_load(recipes.path("demo").read_text())


def demo_stages() -> list[dict]:
    """The demo's training stages, each without its step count (so each can run on its own)."""
    return [{k: v for k, v in stage.items() if k != "steps"} for stage in demo_recipe()["data"]["stages"]]


def stage_label(partitions: list[dict]) -> str:
    """'24 x 128 px + 16 x 64 px' for a stage's partitions."""
    return " + ".join(f"{p['batch_size']} x {p['resolution']} px" for p in partitions)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Median of the per-round ratios b_i / a_i, with their min and max (rounds run A then B back to back)."""
    r = [y / x for x, y in zip(a, b)]
    return statistics.median(r), min(r), max(r)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def synth_shards(name: str, count: int, size: int = 128, shard_size: int = 256) -> Path:
    """Generated training shards (radio data synth) under runs/bench/NAME/train, written once and reused."""
    from radio.data.synth import write_synth

    out = RUNS / name
    if not (out / "info.json").is_file():
        write_synth(out, count, val_count=0, size=size, shard_size=shard_size, progress=False)
    return out / "train"


def jpeg_shards(name: str, count: int, size: int, quality: int = 90, shard_size: int = 256) -> Path:
    """Generated images (radio.data.synth) re-encoded as JPEG at SIZE px, as web-scale shards (img2dataset) hold
    them, under runs/bench/NAME; written once and reused."""
    import io

    from PIL import Image

    from radio.data.shards import ShardSink
    from radio.data.synth import generate

    out = RUNS / name
    done = out / "done"
    if not done.is_file():
        with ShardSink(out, shard_size=shard_size) as sink:
            for i in range(count):
                s = generate(i, size=size)
                buf = io.BytesIO()
                Image.fromarray(s.image).save(buf, format="JPEG", quality=quality)
                sink.write({"__key__": s.key, "jpg": buf.getvalue(), "json": b'{"label": %d}' % s.meta["label"]})
        done.write_text(str(count))
    return out


def train_step(module, opt: torch.optim.Optimizer, batch, step: int = 10**9) -> torch.Tensor:
    """One optimizer step of `module` (radio.train.module.DistillModule) on a training batch
    (radio.data.batch.TrainBatch), as its `training_step` does it but without Lightning: every partition's
    targets (streamed into the normalizers that still estimate, as at global step `step`; the default freezes
    them at once), weighted losses, backward, optimizer step. Returns the loss (detached)."""
    parts = batch.partitions
    targets = [module.objective.targets(p) for p in parts]
    module.objective.observe(module.model.normalizers, targets, step)
    total = None
    for part, tg in zip(parts, targets):
        loss, _ = module.partition_losses(part.image, tg)
        total = part.weight * loss if total is None else total + part.weight * loss
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return total.detach()
