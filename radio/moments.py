"""Streamed sufficient statistics of feature vectors: count, mean and centred second moment, in float64.

`batch_moments` computes them for one batch, `merge_moments` merges two sets exactly (Chan et al.'s parallel
merge), `all_reduce_moments` merges them over ranks. radio.normalize fits its transforms on them.

Reference: Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm for computing sample variances"
(1979).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


class Moments(NamedTuple):
    """Sufficient statistics of a set of vectors. n: () count; mean: (C,); m2: (C, C) sum of centred outer
    products (covariance = m2 / n). All float64."""

    n: Tensor
    mean: Tensor
    m2: Tensor


def batch_moments(x: Tensor) -> Moments:
    """Moments of x: (..., C), flattened over all leading dimensions, computed in float64."""
    x = x.detach().reshape(-1, x.shape[-1]).double()
    n = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
    mean = x.mean(dim=0) if x.shape[0] else torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    xc = x - mean
    return Moments(n, mean, xc.T @ xc)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two sets (exact, order-independent up to rounding)."""
    n = a.n + b.n
    if n.item() == 0:
        return a
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    m2 = a.m2 + b.m2 + torch.outer(delta, delta) * (a.n * b.n / n)
    return Moments(n, mean, m2)


def all_reduce_moments(m: Moments) -> Moments:
    """Merge the moments of every rank (two-pass: global mean first, then centred second moments)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return m
    n = m.n.clone()
    dist.all_reduce(n)
    total = m.mean * m.n
    dist.all_reduce(total)
    mean = total / n.clamp_min(1.0)
    delta = m.mean - mean
    m2 = m.m2 + torch.outer(delta, delta) * m.n
    dist.all_reduce(m2)
    return Moments(n, mean, m2)
