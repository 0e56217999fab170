"""Token merging (ToMe): bipartite soft matching, size-weighted merging, layer schedules, output budgets.

Pure functions from tensors to tensors. A matching function looks at a metric (B, N, C') and returns two
closures that know nothing of the model:

    merge(x, mode)  (B, N, C) -> (B, N - r, C)   combine each merged token into its destination ("sum"/"mean")
    unmerge(x)      (B, N - r, C) -> (B, N, C)   every input position takes the value of its group

Two partitions of the tokens into sources and destinations:
- `bipartite_soft_matching`: ToMe inside a ViT. Protected prefix tokens (summary tokens, registers) are set
  aside and come out first, unchanged; the rest alternate A = x[::2] (sources), B = x[1::2] (destinations);
  cosine scores A B^T; each a takes its best b; the r best edges merge.
- `budget_soft_matching`: output compression for VLMs (RADIOv2.5). Destinations are one token per s x s cell
  of the patch grid (ToMe-SD's stride partition, with the smallest s whose cells fit the budget), the other
  tokens are sources, and exactly N - budget of them merge, so the output has exactly `budget` tokens, in the
  raster order of their anchor positions.

`merge_wavg` merges a size-weighted average and carries the sizes (how many input tokens each token stands
for); proportional attention then adds log(size) to the attention logits (see radio.model.vit).

References: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023; Bolya & Hoffman, "Token Merging
for Fast Stable Diffusion", CVPR-W 2023 (stride partition); Heinrich et al., "RADIOv2.5", 2024 (output token
merging for VLMs).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from radio.ranges import NON_NEGATIVE_INT, OPTIONAL_COUNT, range_errors
from radio.schema import SchemaError, field_path, short

Merge = Callable[..., Tensor]
Unmerge = Callable[[Tensor], Tensor]
Selector = slice | Tensor
SCHEDULES = ("constant", "decreasing")


@dataclass
class TokenMergeConfig:
    """Token-merging defaults a model (and its export) carries; all off by default.

    Args:
        r: tokens merged per block at inference (in-network ToMe); 0 turns it off.
        schedule: "constant" (r in every block) or "decreasing" (2r in the first block, linearly down to 0 in
            the last; the same total number of merges as "constant").
        num_tokens: default output budget: the patch tokens are merged once, after the encoder, down to exactly
            this many (e.g. 256 for a VLM); None returns the full grid.
    """

    r: int = 0
    schedule: str = "constant"
    num_tokens: int | None = None

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        """Range problems of the fields `values` (radio.schema), each naming its field under `where`."""
        errors = merge_errors(values["r"], values["schedule"], field_path(where, "r"),
                              field_path(where, "schedule"))
        return errors + range_errors(field_path(where, "num_tokens"), values["num_tokens"], OPTIONAL_COUNT)

    def __post_init__(self) -> None:
        errors = self.check(vars(self), "tome")
        if errors:
            raise SchemaError(errors)


def merge_errors(r: Any, schedule: Any, r_field: str, schedule_field: str) -> list[str]:
    """Problems of a merge count (an integer >= 0) and a schedule (one of SCHEDULES), naming their fields."""
    errors = range_errors(r_field, r, NON_NEGATIVE_INT)
    if not (isinstance(schedule, str) and schedule in SCHEDULES):
        errors.append(f"{schedule_field}: must be one of {', '.join(SCHEDULES)}, got {short(schedule)}")
    return errors


def merge_schedule(num_layers: int, r: int, schedule: str = "constant") -> list[int]:
    """Tokens to merge in each of `num_layers` blocks.

    "constant": r everywhere. "decreasing": round(2r (L-1-i)/(L-1)) in block i, from 2r down to 0, so the
    total (r L) matches "constant" but the merges happen earlier, where they save the most compute.
    """
    errors = merge_errors(r, schedule, "r", "schedule")
    if errors:
        raise SchemaError(errors)
    if schedule == "constant" or num_layers == 1:
        return [r] * num_layers
    return [round(2 * r * (num_layers - 1 - i) / (num_layers - 1)) for i in range(num_layers)]


def clamp_r(num_tokens: int, r: int, protected: int = 0) -> int:
    """The r that `bipartite_soft_matching` actually merges: at most the number of sources, ceil((N-P)/2)."""
    return max(0, min(r, (num_tokens - protected + 1) // 2))


def tokens_per_layer(num_tokens: int, schedule: list[int], protected: int = 0) -> list[int]:
    """Tokens (prefix included) that leave each block under `schedule`, starting from `num_tokens`."""
    out = []
    for r in schedule:
        num_tokens -= clamp_r(num_tokens, r, protected)
        out.append(num_tokens)
    return out


def _identity(x: Tensor, mode: str = "mean") -> Tensor:
    return x


def _soft_matching(a: Tensor, b: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """Match sources a (B, S, C') to destinations b (B, D, C') by dot product (cosine: both L2-normalized);
    keep the best r edges.

    Returns (kept, moved, into), each (B, *, 1) long: sources that stay (in their original order), sources that
    merge (best edge first), and the destination each moving source merges into.
    """
    best, best_dst = (a @ b.transpose(-1, -2)).max(dim=-1)  # (B, S)
    order = best.argsort(dim=-1, descending=True)
    moved = order[:, :r]
    kept = order[:, r:].sort(dim=-1).values
    into = best_dst.gather(1, moved)
    return kept[..., None], moved[..., None], into[..., None]


def _closures(protected: int, src: Selector, dst: Selector, kept: Tensor, moved: Tensor, into: Tensor,
              num_in: int, order: Tensor | None = None) -> tuple[Merge, Unmerge]:
    """Build merge/unmerge for a partition of the non-protected tokens into sources `src` and destinations `dst`
    (slices or index tensors into x[:, protected:]). `order` (B, N_out, 1), if given, permutes the output."""
    num_kept = kept.shape[1]

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        c = x.shape[-1]
        rest = x[:, protected:]
        s, d = rest[:, src], rest[:, dst]
        d = d.scatter_reduce(1, into.expand(-1, -1, c), s.gather(1, moved.expand(-1, -1, c)), reduce=mode)
        out = torch.cat([x[:, :protected], s.gather(1, kept.expand(-1, -1, c)), d], dim=1)
        return out if order is None else out.gather(1, order.expand(-1, -1, c))

    def unmerge(x: Tensor) -> Tensor:
        bsz, _, c = x.shape
        if order is not None:
            x = torch.empty_like(x).scatter_(1, order.expand(-1, -1, c), x)
        d = x[:, protected + num_kept:]
        s = x.new_empty(bsz, kept.shape[1] + moved.shape[1], c)
        s.scatter_(1, kept.expand(-1, -1, c), x[:, protected:protected + num_kept])
        s.scatter_(1, moved.expand(-1, -1, c), d.gather(1, into.expand(-1, -1, c)))
        out = x.new_empty(bsz, num_in, c)
        out[:, :protected] = x[:, :protected]
        rest = out[:, protected:]
        rest[:, src] = s
        rest[:, dst] = d
        return out

    return merge, unmerge


def bipartite_soft_matching(metric: Tensor, r: int, protected: int = 1) -> tuple[Merge, Unmerge]:
    """ToMe's bipartite soft matching: merge r of the N tokens (B, N, C') away.

    The first `protected` tokens (CLS/summary tokens, registers) never merge and come out first, unchanged.
    The others alternate into sources A = x[::2] and destinations B = x[1::2]; each source's best destination
    by cosine similarity of `metric` is an edge and the r most similar edges merge. r is clamped to the number
    of sources. Output order: protected tokens, sources that stay (in order), destinations (in order).

    Args:
        metric: (B, N, C') similarity features (in a ViT block: the keys averaged over heads).
        r: tokens to remove.
        protected: number of prefix tokens that never merge.
    Returns:
        (merge, unmerge): merge(x (B, N, C), mode="mean"|"sum") -> (B, N - r, C); unmerge(y) -> (B, N, C).
    """
    n = metric.shape[1]
    if protected < 0 or protected > n:
        raise ValueError(f"protected must be in [0, {n}], got {protected}")
    r = clamp_r(n, r, protected)
    if r <= 0:
        return _identity, lambda x: x
    with torch.no_grad():
        rest = F.normalize(metric[:, protected:], dim=-1)
        kept, moved, into = _soft_matching(rest[:, ::2], rest[:, 1::2], r)
    return _closures(protected, slice(0, None, 2), slice(1, None, 2), kept, moved, into, n)


def budget_stride(h: int, w: int, num_tokens: int) -> int:
    """Smallest cell side s such that one destination per s x s cell of an h x w grid fits `num_tokens`."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    s = max(1, math.isqrt(max(1, h * w // num_tokens)))
    while math.ceil(h / s) * math.ceil(w / s) > num_tokens:
        s += 1
    return s


def cell_anchors(h: int, w: int, s: int, device=None) -> Tensor:
    """Raster indices of one anchor per s x s cell of an h x w grid: the cell's centre, clipped to the grid."""
    def axis(n: int) -> Tensor:
        starts = torch.arange(0, n, s, device=device)
        return torch.minimum(starts + s // 2, torch.full_like(starts, n - 1))

    return (axis(h)[:, None] * w + axis(w)[None, :]).flatten()


def budget_soft_matching(metric: Tensor, grid: tuple[int, int], num_tokens: int) -> tuple[Merge, Unmerge]:
    """Merge the h*w tokens of a patch grid down to exactly `num_tokens` (output compression for VLMs).

    Destinations: one per s x s cell (the smallest s for which they fit the budget). Every other token is a
    source; each takes its most similar destination (cosine of `metric`) and the N - num_tokens most similar
    edges merge. The output is in the raster order of each token's anchor (its own position, or its cell's
    anchor for a destination).

    Args:
        metric: (B, h*w, C') similarity features, e.g. the encoder's output patch tokens.
        grid: (h, w) patch grid.
        num_tokens: the budget; 1 <= num_tokens <= h*w.
    Returns:
        (merge, unmerge) as in `bipartite_soft_matching`, with N - r = num_tokens.
    """
    h, w = grid
    n = metric.shape[1]
    if n != h * w:
        raise ValueError(f"metric has {n} tokens but the grid is {h}x{w} = {h * w}")
    if not 1 <= num_tokens <= n:
        raise ValueError(f"num_tokens must be in [1, {n}] for a {h}x{w} grid, got {num_tokens}")
    if num_tokens == n:
        return _identity, lambda x: x
    s = budget_stride(h, w, num_tokens)
    dev = metric.device
    is_dst = torch.zeros(n, dtype=torch.bool, device=dev)
    is_dst[cell_anchors(h, w, s, dev)] = True
    dst, src = is_dst.nonzero().flatten(), (~is_dst).nonzero().flatten()
    with torch.no_grad():
        metric = F.normalize(metric, dim=-1)
        kept, moved, into = _soft_matching(metric[:, src], metric[:, dst], n - num_tokens)
        anchors = torch.cat([src[kept[..., 0]], dst.expand(metric.shape[0], -1)], dim=1)
        order = anchors.argsort(dim=1)[..., None]
    return _closures(0, src, dst, kept, moved, into, n, order)


def merge_wavg(merge: Merge, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Size-weighted average merge: x = sum(s x) / sum(s), s = sum(s) over each group.

    Args:
        merge: from a matching function.
        x: (B, N, C) tokens.
        size: (B, N, 1) how many original tokens each token stands for; None means all ones.
    Returns:
        (x (B, N', C), size (B, N', 1)).
    """
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    if merge is _identity:  # r = 0: exactly the input, no rounding from x * s / s
        return x, size
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def group_index(unmerge: Unmerge, num_out: int, batch: int, device=None) -> Tensor:
    """(B, N) long: for each input token of a merge, the index of the output token it went to."""
    idx = torch.arange(num_out, device=device).view(1, num_out, 1).expand(batch, -1, -1)
    return unmerge(idx)[..., 0]
