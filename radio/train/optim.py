"""AdamW with decoupled weight decay (not on norms, biases, tokens or the position grid), linear warm-up and
cosine decay, stepped every optimizer step."""
from __future__ import annotations

import math

import torch
from torch import nn

from radio.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
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
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
