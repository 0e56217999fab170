"""Per-teacher adaptor heads: one MLP on the teacher's summary token, one on the patch tokens.

MLP shape (AM-RADIO / RADIOv2.5): Linear -> k x residual(LN -> GELU -> Linear) -> LN -> GELU -> Linear.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from radio.ranges import NON_NEGATIVE_INT, OPTIONAL_COUNT, fields_errors


@dataclass
class AdaptorConfig:
    """Adaptor MLP shape.

    Args:
        hidden_dim: hidden width; None uses the largest teacher dimension (summary or feature).
        num_inner: number of residual (LN -> GELU -> Linear) blocks.
    """

    hidden_dim: int | None = None
    num_inner: int = 1

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        """Range problems of the fields `values` (radio.schema): a width >= 1 (or None), a count >= 0."""
        return fields_errors(where, values, {"hidden_dim": OPTIONAL_COUNT, "num_inner": NON_NEGATIVE_INT})


class _Residual(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc(self.act(self.norm(x)))


class MLPAdaptor(nn.Module):
    """Linear -> num_inner x residual(LN -> GELU -> Linear) -> LN -> GELU -> Linear, applied on the last dim."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_inner: int = 1) -> None:
        super().__init__()
        self.fc_in = nn.Linear(in_dim, hidden_dim)
        self.inner = nn.Sequential(*[_Residual(hidden_dim) for _ in range(num_inner)])
        self.norm = nn.LayerNorm(hidden_dim)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.act(self.norm(self.inner(self.fc_in(x)))))


class TeacherAdaptor(nn.Module):
    """Summary and feature heads of one teacher.

    Args:
        in_dim: student width.
        summary_dim: teacher summary width, or None for a teacher without a summary target.
        feature_dim: teacher feature width.
    """

    def __init__(self, in_dim: int, summary_dim: int | None, feature_dim: int, cfg: AdaptorConfig) -> None:
        super().__init__()
        hidden = cfg.hidden_dim or max(feature_dim, summary_dim or 0, in_dim)
        self.summary = MLPAdaptor(in_dim, hidden, summary_dim, cfg.num_inner) if summary_dim else None
        self.features = MLPAdaptor(in_dim, hidden, feature_dim, cfg.num_inner)
