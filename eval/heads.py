"""Train a grid of probe heads on cached frozen features in one pass.

Every head has its own learning rate (and, for the linear probe, its own pooling of the features); all heads see
the same mini-batches, their losses are summed into one backward pass (the heads share no parameters, so each
gets exactly its own gradient) and one AdamW step with a per-head parameter group and a cosine schedule. After
each epoch every head is scored on the validation features; the best head is chosen by its final score.

References: DINOv2 (Oquab et al., 2023), `dinov2/eval/linear.py` (a grid of linear heads in one pass).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class GridResult:
    """Outcome of a head grid.

    names: one label per head (e.g. "summary lr=0.001"); lrs: learning rate per head; scores: final validation
    score per head; curves: validation score per head at each of `curve_epochs` (1-based); train_loss: mean
    training loss per head per epoch; best: index of the best head (highest final score).
    """

    names: list[str]
    lrs: list[float]
    scores: list[float]
    curves: list[list[float]] = field(default_factory=list)
    train_loss: list[list[float]] = field(default_factory=list)
    curve_epochs: list[int] = field(default_factory=list)

    @property
    def best(self) -> int:
        finite = [s if math.isfinite(s) else -math.inf for s in self.scores]
        return max(range(len(finite)), key=finite.__getitem__)

    def as_dict(self) -> dict:
        return {"heads": [{"name": n, "lr": lr, "score": s, "curve": c, "train_loss": t}
                          for n, lr, s, c, t in zip(self.names, self.lrs, self.scores, self.curves, self.train_loss)],
                "curve_epochs": self.curve_epochs, "best": self.names[self.best]}


def train_head_grid(heads: Sequence[nn.Module], names: Sequence[str], lrs: Sequence[float], keys: Sequence[str],
                    features: dict[str, Tensor], targets: Tensor,
                    loss_fn: Callable[[Tensor, Tensor], Tensor],
                    evaluate: Callable[[Sequence[nn.Module]], list[float]], epochs: int = 20, batch_size: int = 256,
                    weight_decay: float = 1e-4, seed: int = 0, progress: bool = False, eval_every: int = 1,
                    device: str | torch.device = "cpu") -> GridResult:
    """Train `heads[i]` on `features[keys[i]]` with learning rate `lrs[i]`.

    Args:
        features: key -> (N, ...) training inputs (any float dtype; cast to float32 per batch).
        targets: (N, ...) int64 targets for `loss_fn(logits, targets)`.
        evaluate: heads -> one validation score per head, called in eval mode every `eval_every` epochs and after
            the last.
    """
    n = targets.shape[0]
    if any(f.shape[0] != n for f in features.values()):
        raise ValueError(f"features and targets disagree on the number of samples ({n})")
    if not (len(heads) == len(names) == len(lrs) == len(keys)):
        raise ValueError("heads, names, lrs and keys must have the same length")
    modules = nn.ModuleList(heads).to(device)
    opt = torch.optim.AdamW([{"params": h.parameters(), "lr": lr} for h, lr in zip(modules, lrs)],
                            weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    result = GridResult(list(names), [float(x) for x in lrs], [math.nan] * len(heads),
                        [[] for _ in heads], [[] for _ in heads])
    epochs_it = range(epochs)
    if progress:
        from tqdm import tqdm

        epochs_it = tqdm(epochs_it, desc="probe heads", unit="epoch", leave=False)
    for epoch in epochs_it:
        modules.train()
        sums = torch.zeros(len(heads))
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            y = targets[idx].to(device)
            batch = {k: features[k][idx].to(device=device, dtype=torch.float32) for k in set(keys)}
            losses = torch.stack([loss_fn(h(batch[k]), y) for h, k in zip(modules, keys)])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            sched.step()
            sums += losses.detach().cpu() * len(idx)
        for i in range(len(heads)):
            result.train_loss[i].append(float(sums[i]) / n)
        if (epoch + 1) % eval_every and epoch + 1 != epochs:
            continue
        modules.eval()
        with torch.no_grad():
            scores = evaluate(list(modules))
        result.curve_epochs.append(epoch + 1)
        for i, s in enumerate(scores):
            result.curves[i].append(float(s))
    result.scores = [c[-1] for c in result.curves]
    return result


def standardize(train: Tensor, *others: Tensor, eps: float = 1e-6) -> list[Tensor]:
    """Per-channel standardization with the training statistics (a fixed affine map; conditions the heads).

    train: (N, C); others: (M, C). Returns [train, *others] standardized.
    """
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(eps)
    return [(t - mean) / std for t in (train, *others)]
