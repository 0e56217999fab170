"""Normalizers of teacher features: fitted on streamed statistics, then frozen; exact inverse.

The loss compares the adaptor's output with the *normalized* teacher features; at inference the adaptor's output
is mapped back to the teacher's space through `inverse`. Statistics and the fitted transform are buffers of
shapes fixed at construction, so they live in checkpoints and in exports.

Statistics: `update(x)` merges the batch's count, mean and centred second moment (float64) into running ones
(Chan et al.'s parallel merge, radio.moments); `fit()` all-reduces them across ranks (when torch.distributed is initialized)
and fits the transform; `freeze()` fits a last time, keeps the global statistics and refuses further updates.
Covariances are population covariances (divided by n). In training the running statistics stay rank-local
until merged: kept out of DDP's buffer broadcasts (`keep_statistics_local`), merged over ranks into
checkpoints (`store_global_statistics`) and, on a resume, carried on by rank 0 alone (`restart_statistics`).

Transforms, all affine y = (x - mu) W^T with an exact inverse x = y W_inv^T + mu:
    none         identity
    global_std   one scalar mean and one scalar std over all channels and samples
    channel_std  per-channel mean and std
    pca_whiten   W = Lambda^-1/2 U^T (eigenvalues clipped at `eps` times the largest)
    phis         W = phi^-1 H U^T, phi = sqrt(tr(Sigma) / C): a rotation times one scalar (PHI-S)

References: PHI-S (Ranzinger et al., 2024, arXiv:2410.01680); Chan, Golub & LeVeque, "Updating formulae and a
pairwise algorithm for computing sample variances" (1979).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from radio.hadamard import construction, hadamard, normalized_hadamard
from radio.moments import Moments, all_reduce_moments, batch_moments, merge_moments
from radio.registry import Registry

NORMALIZERS: Registry[type[Normalizer]] = Registry("normalizer")


class Normalizer(nn.Module):
    """Base class. Features are (..., C) with channels last.

    Subclasses implement `update` (stream statistics), `fit` (fit the transform), `forward` and `inverse`.
    """

    fitted: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def needs_statistics(self) -> bool:
        """True while `update` should still be fed features."""
        return False

    @property
    def ready(self) -> bool:
        """True when `forward` and `inverse` can be used."""
        return True

    @torch.no_grad()
    def update(self, x: Tensor) -> None:  # noqa: ARG002 - identity keeps no statistics
        return None

    @torch.no_grad()
    def fit(self) -> None:
        self.fitted.fill_(True)

    @torch.no_grad()
    def freeze(self) -> None:
        self.fit()

    def forward(self, x: Tensor) -> Tensor:
        return x

    def inverse(self, y: Tensor) -> Tensor:
        return y


@NORMALIZERS.register("none")
class IdentityNormalizer(Normalizer):
    """No normalization: targets are the raw teacher features."""


class AffineNormalizer(Normalizer):
    """A normalizer y = (x - mu) W^T fitted from streamed float64 moments; subclasses define `transform`.

    Args:
        dim: feature width C.
        eps: floor of variances (relative to the largest for pca_whiten, absolute otherwise).
    """

    frozen: Tensor
    count: Tensor
    running_mean: Tensor
    running_m2: Tensor
    mu: Tensor
    weight: Tensor
    weight_inv: Tensor

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__(dim)
        self.eps = eps
        f64: dict[str, Any] = dict(dtype=torch.float64)
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("count", torch.zeros((), **f64))
        self.register_buffer("running_mean", torch.zeros(dim, **f64))
        self.register_buffer("running_m2", torch.zeros(dim, dim, **f64))
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("weight", torch.eye(dim))
        self.register_buffer("weight_inv", torch.eye(dim))

    @property
    def needs_statistics(self) -> bool:
        return not bool(self.frozen)

    @property
    def ready(self) -> bool:
        return bool(self.fitted)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, samples={int(self.count)}, fitted={bool(self.fitted)}, frozen={bool(self.frozen)}"

    def moments(self) -> Moments:
        return Moments(self.count, self.running_mean, self.running_m2)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge the statistics of x: (..., C) into the running ones (float64)."""
        if self.frozen:
            raise RuntimeError(f"{type(self).__name__}: update() after freeze(); statistics are final")
        if x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}(dim={self.dim}): features have {x.shape[-1]} channels")
        m = merge_moments(self.moments(), batch_moments(x.to(self.running_mean.device)))
        self.count.copy_(m.n)
        self.running_mean.copy_(m.mean)
        self.running_m2.copy_(m.m2)

    def _global_moments(self) -> Moments:
        m = all_reduce_moments(self.moments())
        if m.n.item() < 2:
            raise RuntimeError(f"{type(self).__name__}(dim={self.dim}): fit() needs at least 2 samples across all "
                               f"ranks, got {int(m.n.item())}; call update() first")
        return m

    @torch.no_grad()
    def fit(self) -> None:
        """Fit the transform on the statistics of every rank so far (the running ones stay local)."""
        m = self._global_moments()
        self._set_transform(m)

    @torch.no_grad()
    def freeze(self) -> None:
        """Fit a last time on the global statistics, keep them, and refuse further updates."""
        if self.frozen:
            return
        m = self._global_moments()
        self.count.copy_(m.n)
        self.running_mean.copy_(m.mean)
        self.running_m2.copy_(m.m2)
        self._set_transform(m)
        self.frozen.fill_(True)

    def _set_transform(self, m: Moments) -> None:
        cov = m.m2 / m.n
        mu, w, w_inv = self.transform(m.mean, 0.5 * (cov + cov.T))
        self.mu.copy_(mu.float())
        self.weight.copy_(w.float())
        self.weight_inv.copy_(w_inv.float())
        self.fitted.fill_(True)

    def transform(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mu (C,), W (C, C), W_inv (C, C)) in float64 from the mean and covariance."""
        raise NotImplementedError

    def _check(self, x: Tensor) -> None:
        if not self.ready:
            raise RuntimeError(f"{type(self).__name__}(dim={self.dim}) is used before fit(); stream statistics "
                               "with update() and call fit() first")

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) teacher features -> (..., C) normalized, float32 (never autocast)."""
        self._check(x)
        return _float32(lambda: (x.float() - self.mu) @ self.weight.T, x)

    def inverse(self, y: Tensor) -> Tensor:
        """(..., C) normalized -> (..., C) in the teacher's space, float32 (never autocast)."""
        self._check(y)
        return _float32(lambda: y.float() @ self.weight_inv.T + self.mu, y)


def _float32(fn, x: Tensor) -> Tensor:
    """Run fn outside autocast (the statistics are float32 and bf16 would cost ~3 digits); no context manager
    when autocast is off, so exporters see plain arithmetic."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn()
    return fn()


def _eigh(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending, negatives clipped to 0) and eigenvectors of a symmetric matrix."""
    lam, u = torch.linalg.eigh(cov)
    return lam.clamp_min(0.0), u


@NORMALIZERS.register("global_std")
class GlobalStdNormalizer(AffineNormalizer):
    """One scalar mean and one scalar standard deviation over all channels and samples."""

    def transform(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g = mean.mean()
        var = (torch.diagonal(cov).sum() + ((mean - g) ** 2).sum()) / self.dim
        std = var.clamp_min(self.eps).sqrt()
        eye = torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        return g.expand(self.dim), eye / std, eye * std


@NORMALIZERS.register("channel_std")
class ChannelStdNormalizer(AffineNormalizer):
    """Per-channel standardization: every channel gets mean 0 and variance 1 from its own scale."""

    def transform(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        std = torch.diagonal(cov).clamp_min(self.eps).sqrt()
        return mean, torch.diag(1.0 / std), torch.diag(std)


@NORMALIZERS.register("pca_whiten")
class PCAWhitenNormalizer(AffineNormalizer):
    """PCA whitening: decorrelated unit-variance outputs; directions without variance are floored at eps."""

    def transform(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lam, u = _eigh(cov)
        lam = lam.clamp_min(self.eps * max(lam.max().item(), self.eps))
        return mean, (u / lam.sqrt()).T, u * lam.sqrt()


@NORMALIZERS.register("phis")
class PHIS(AffineNormalizer):
    """PHI-S: x' = phi^-1 H U^T (x - mu), with H the normalized Hadamard matrix of order C and
    phi = sqrt(tr(Sigma) / C). Every output channel has unit variance, from one scalar; the map is a rotation
    times that scalar, so errors in the normalized space are errors in the teacher's space times 1/phi.

    Buffers besides the affine ones: `phi` () and `rotation` (C, C) = H U^T.
    """

    phi: Tensor
    rotation: Tensor

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        if construction(dim) is None:
            hadamard(dim)  # raises HadamardError naming the order and why
        super().__init__(dim, eps)
        self.register_buffer("phi", torch.ones((), dtype=torch.float64))
        self.register_buffer("rotation", torch.eye(dim))

    def transform(self, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lam, u = _eigh(cov)
        phi = lam.mean().clamp_min(self.eps).sqrt()
        rot = normalized_hadamard(self.dim).to(cov) @ u.T
        self.phi.copy_(phi)
        self.rotation.copy_(rot.float())
        return mean, rot / phi, rot.T * phi


def build_normalizer(kind: str, dim: int) -> Normalizer:
    """A normalizer by registered name ("none", "global_std", "channel_std", "pca_whiten", "phis")."""
    return NORMALIZERS.get(kind)(dim)


def check_normalizer(kind: str, dim: int) -> None:
    """Raise (naming the problem) if `build_normalizer(kind, dim)` would fail, without building it."""
    NORMALIZERS.get(kind)
    if kind == "phis" and construction(dim) is None:
        hadamard(dim)  # raises HadamardError with the reason


# -- statistics across ranks: DDP and checkpoints ------------------------------------------------------------
STATISTICS = ("count", "running_mean", "running_m2")  # an AffineNormalizer's running Moments, as buffers


def keep_statistics_local(module: nn.Module, prefix: str, normalizers: nn.Module) -> None:
    """Keep DistributedDataParallel from overwriting the buffers of `normalizers` (named `{prefix}{buffer}`
    in `module`) with rank 0's, at wrap time and before every forward: their statistics are rank-local until
    merged. torch has no public way to exclude some buffers only (`forward_sync_buffers=False` stops the sync
    of every buffer, and only at forward); DDP reads the list set by its private
    `_set_params_and_buffers_to_ignore_for_model` (the workaround its documentation gives), called here and
    nowhere else."""
    from torch.nn.parallel import DistributedDataParallel

    names = [f"{prefix}{n}" for n, _ in normalizers.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)


def store_global_statistics(normalizers: Mapping[str, Normalizer], state: dict[str, Tensor],
                            prefix: str) -> None:
    """Put the running statistics of the normalizers still estimating (frozen ones hold the global ones),
    merged over ranks, into the state dict `state` (keys `{prefix}{name}.{buffer}`). A collective: call on
    every rank."""
    for name, norm in normalizers.items():
        if not isinstance(norm, AffineNormalizer) or bool(norm.frozen):
            continue
        m = all_reduce_moments(norm.moments())
        for key, value in zip(STATISTICS, m):
            if f"{prefix}{name}.{key}" in state:
                state[f"{prefix}{name}.{key}"] = value.detach().clone().cpu()


def restart_statistics(normalizers: Mapping[str, Normalizer], state: dict[str, Tensor], prefix: str) -> None:
    """On a rank other than 0, before loading `state` (a checkpoint's state dict, which holds the global
    statistics): zero the running statistics of the normalizers still estimating, so that rank 0 alone carries
    them on and the next all-reduce counts every sample once."""
    for name, norm in normalizers.items():
        frozen = state.get(f"{prefix}{name}.frozen")
        if not isinstance(norm, AffineNormalizer) or frozen is None or bool(frozen):
            continue
        for key in STATISTICS:
            state[f"{prefix}{name}.{key}"] = torch.zeros_like(state[f"{prefix}{name}.{key}"])


__all__ = ["NORMALIZERS", "Moments", "Normalizer", "IdentityNormalizer", "AffineNormalizer", "GlobalStdNormalizer",
           "ChannelStdNormalizer", "PCAWhitenNormalizer", "PHIS", "batch_moments", "merge_moments",
           "all_reduce_moments", "build_normalizer", "check_normalizer", "STATISTICS",
           "keep_statistics_local", "store_global_statistics", "restart_statistics"]
