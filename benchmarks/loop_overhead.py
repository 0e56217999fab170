"""Loop overhead: a `radio fit` training step against a bare PyTorch loop doing the same math, in one process.

    PYTHONPATH=$PWD python benchmarks/loop_overhead.py [--rounds 6] [--steps 6] [--threads 2] [--profile]

Side A is `radio fit` itself: the LightningCLI of `radio fit` (RadioCLI) built from recipes/demo.yaml, with its
trainer (CSV logger every 5 steps, checkpoint callback, 32-true precision), DistillModule and ShardDataModule
(local shards read by random access in the seeded epoch order, one loader worker), only without validation and
the progress bar; its per-step reliability work (step seeding, the non-finite-loss guard, data-health counts)
is part of what it costs. Side B is a hand-written loop over the same model, teachers, optimizer (AdamW, same
parameter groups, warm-up/cosine LambdaLR) and a DataLoader of the same datamodule: per partition the teachers'
targets (no grad), the student's tokens, each adaptor against the normalized targets (MSE features after grid
matching, 1 - cos summary), weighted sum, zero_grad / backward / step / scheduler step. Both sides train the same
parameters in turns.

The normalizers are estimated over the first 2 steps (a warm-up fit of 4 steps) and frozen afterwards, so both
sides apply the same frozen PHI-S transforms. Then one `radio fit` run alternates: `--steps` Lightning steps, then
`--steps` bare steps run from a callback, and so on for `--rounds` rounds (A, B, A, B ...; neither loader
restarts). A step's time is the interval between the ends of consecutive steps of its side, so it includes
fetching the batch, logging and the other callbacks. Printed per demo stage: median
step times, load averages, and the ratio A / B last (goal <= 1.10).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench

import recipes
from radio.cli.fit import RadioCLI
from radio.data.batch import Partition
from radio.data.datamodule import ShardDataModule
from radio.losses import match_grids, tokens_to_grid
from radio.train.module import DistillModule
from radio.train.optim import build_optimizer
from radio.train.targets import teacher_targets


class Interleave(L.Callback):
    """Runs the bare loop inside the `radio fit` run: after every `steps` Lightning steps, `steps` bare steps.

    It is the first callback, so the Lightning step time (between the ends of consecutive steps, bare steps
    excluded) includes the other callbacks (checkpointing), the logger and fetching the next batch. Neither
    side's loader ever restarts. The first `skip` steps are a warm-up and not timed.
    """

    def __init__(self, bare: BareLoop, steps: int, skip: int) -> None:
        self.bare, self.steps, self.skip = bare, steps, skip
        self.fit_times: list[float] = []
        self.bare_times: list[float] = []
        self.loads: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        step = trainer.global_step  # steps done, this one included
        if self._last is not None and step > self.skip:
            self.fit_times.append(now - self._last)
        self._last = now
        if step >= self.skip and step % self.steps == 0:
            with torch.enable_grad():
                stamps = [time.perf_counter()]
                for _ in range(self.steps):
                    self.bare.step()
                    stamps.append(time.perf_counter())
            self.bare_times += [b - a for a, b in itertools.pairwise(stamps)]
            self.loads.append(_bench.load())
            self._last = time.perf_counter()


def build_cli(shards: Path, stage: dict, root: Path) -> RadioCLI:
    """`radio fit`'s CLI objects for the demo recipe restricted to one stage (not run)."""
    args = ["--config", str(recipes.path("demo")), "--data.shards", str(shards), "--data.val_shards", "null",
            "--data.stages", json.dumps([stage]),
            "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.limit_val_batches", "0", "--trainer.max_steps", "4",
            "--model.normalization.estimate_steps", "2"]
    return RadioCLI(DistillModule, ShardDataModule, args=args, run=False, save_config_kwargs={"overwrite": True},
                    auto_configure_optimizers=False)


class BareLoop:
    """The same training step written as a plain PyTorch loop over `module`'s model and teachers."""

    def __init__(self, module: DistillModule, loader: torch.utils.data.DataLoader, total_steps: int) -> None:
        self.model = module.model
        self.teachers = module.teachers
        self.entries = {e.name: e for e in module.entries}
        self.patch = module.patch_size
        self.batches = iter(loader)
        opt = build_optimizer(self.model, module.optim_cfg, total_steps)
        self.opt, self.sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]

    def loss(self, part: Partition) -> torch.Tensor:
        x = part.image
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        names = part.teachers or list(self.entries)
        with torch.no_grad():
            targets = {n: teacher_targets(self.teachers[n], x, grid, mosaic=self.entries[n].mosaic) for n in names}
        tokens = self.model.forward_tokens(x)
        total = x.new_zeros(())
        for n, tg in targets.items():
            e = self.entries[n]
            pred = self.model.adapt(n, tokens, normalized=True)
            target = self.model.normalizers[n](tg.features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            pf, tf = match_grids(tokens_to_grid(pred.features, tokens.grid), target)
            total = total + e.feature_weight * F.mse_loss(pf, tf)
            if pred.summary is not None and tg.summary is not None:
                cos = F.cosine_similarity(pred.summary, tg.summary, dim=-1)
                total = total + e.summary_weight * (1 - cos).mean()
        return total

    def step(self) -> None:
        batch = next(self.batches)
        total = sum(p.weight * self.loss(p) for p in batch.partitions)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.sched.step()


def measure_stage(shards: Path, stage: dict, label: str, a: argparse.Namespace) -> dict[str, Any]:
    root = _bench.RUNS / "loop_overhead" / label
    cli = build_cli(shards, stage, root)
    trainer, module, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(module, datamodule=dm)  # 4 steps: normalizers fitted and frozen after step 2, modules warm
    if any(m.needs_statistics for m in module.model.normalizers.values()):
        raise RuntimeError("normalizers still estimating after the warm-up")
    bare = BareLoop(module, dm.train_dataloader(), total_steps=10_000)
    for _ in range(2):
        bare.step()  # warm-up of side B
    skip = trainer.global_step + 2
    clock = Interleave(bare, a.steps, skip)
    trainer.callbacks.insert(0, clock)
    trainer.fit_loop.epoch_loop.max_steps = skip + a.rounds * a.steps
    trainer.fit(module, datamodule=dm)
    trainer.callbacks.remove(clock)
    out = {"stage": label, "partitions": _bench.stage_label(stage["partitions"]),
           "fit_s": _bench.median(clock.fit_times),
           "bare_s": _bench.median(clock.bare_times), "n": (len(clock.fit_times), len(clock.bare_times)),
           "load": (min(clock.loads), max(clock.loads))}
    out["ratio"] = out["fit_s"] / out["bare_s"]
    if a.profile:
        out["profile"] = profile_fit(trainer, module, dm, a.steps)
    return out


def profile_fit(trainer: L.Trainer, module: DistillModule, dm: ShardDataModule, steps: int) -> str:
    """cProfile of `steps` more `radio fit` steps: Lightning's and radio's Python functions by cumulative time
    (the loop's overhead is Python-level; torch ops are the same on both sides)."""
    import cProfile
    import io
    import pstats

    trainer.fit_loop.epoch_loop.max_steps = trainer.global_step + steps
    prof = cProfile.Profile()
    prof.enable()
    trainer.fit(module, datamodule=dm)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
    stats.print_stats(r"lightning/pytorch/(loops|core|trainer|callbacks|loggers)|radio/train", 30)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6, help="steps per round and side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true",
                    help="also print a cProfile table (Lightning and radio.train functions) of radio fit steps")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(_bench.machine())
    t0 = time.time()
    shards = _bench.synth_shards("synth128", 512)
    rows = []
    for i, stage in enumerate(_bench.demo_stages()):
        rows.append(measure_stage(shards, stage, f"stage{i}", a))
        r = rows[-1]
        print(f"demo stage {i} ({r['partitions']}): radio fit {r['fit_s'] * 1e3:.1f} ms/step, bare loop "
              f"{r['bare_s'] * 1e3:.1f} ms/step (medians of {r['n'][0]} and {r['n'][1]}), "
              f"load {r['load'][0]:.2f}-{r['load'][1]:.2f}",
              flush=True)
        if "profile" in r:
            print(r["profile"])
    print(f"total {time.time() - t0:.0f} s")
    for i, r in enumerate(rows):
        print(f"ratio radio fit / bare loop, demo stage {i} ({r['partitions']}): {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
