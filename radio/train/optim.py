"""AdamW with decoupled weight decay (not on norms, biases, tokens or the position grid), linear warm-up and
cosine decay, stepped every optimizer step. A resume trains at the recipe's `model.optimizer.lr` even if the
checkpoint was trained at another one (`use_recipe_lr`)."""
from __future__ import annotations

import math
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from radio.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(("reg_token", "pos_embed")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(cfg: OptimConfig, total_steps: int):
    """lr multiplier per step: linear warm-up to 1, then cosine down to `min_lr_ratio` at `total_steps`."""

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return lr_lambda


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int) -> dict:
    """Lightning's `configure_optimizers` dictionary for `model`."""
    betas = cast("tuple[float, float]", tuple(cfg.betas))
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def total_steps(trainer: L.Trainer | None) -> int:
    """The schedule's length: the trainer's max_steps, else its estimated optimizer steps, else 10,000."""
    if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
        return trainer.max_steps
    if trainer is not None:
        est = trainer.estimated_stepping_batches
        if math.isfinite(est):
            return int(est)
    return 10_000


def use_recipe_lr(checkpoint: dict[str, Any], lr: float) -> None:
    """Resume at the recipe's `lr`: where the checkpoint's optimizer and schedule were built for another base
    lr (e.g. one lowered after a non-finite stop), their restored lrs are rescaled to it (the schedule's shape
    and position are kept)."""
    new = float(lr)
    old: set[float] = set()
    for state in checkpoint.get("optimizer_states") or []:
        for g in state.get("param_groups", []):
            base = float(g.get("initial_lr", g.get("lr", new)))
            if not math.isclose(base, new, rel_tol=1e-9):
                old.add(base)
                g["lr"] = float(g["lr"]) * new / base if base > 0 else new
                g["initial_lr"] = new
    for state in checkpoint.get("lr_schedulers") or []:
        bases = [float(b) for b in state.get("base_lrs", [])]
        if bases and any(not math.isclose(b, new, rel_tol=1e-9) for b in bases):
            old.update(bases)
            if state.get("_last_lr"):
                state["_last_lr"] = [float(v) * new / b if b > 0 else new for v, b in zip(state["_last_lr"], bases)]
            state["base_lrs"] = [new] * len(bases)
    if old:
        rank_zero_info(f"model.optimizer.lr: the recipe's {new:g} replaces the checkpoint's "
                       f"{', '.join(f'{v:g}' for v in sorted(old))} (the resumed run trains at {new:g}, the "
                       f"schedule continuing from step {checkpoint.get('global_step', '?')})")
