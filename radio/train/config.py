"""Recipe schemas of the training loop (LightningCLI reads these type hints; unknown keys are rejected)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Type, TypeVar

from teachers.base import TeacherSpec

T = TypeVar("T")


@dataclass
class TeacherEntry(TeacherSpec):
    """A teacher in a recipe: how to build it (TeacherSpec) and how it weighs in the loss.

    Args:
        summary_weight: weight of the summary (1 - cos) loss; ignored for teachers without a summary.
        feature_weight: weight of the feature loss.
        normalizer: normalizer of the teacher's features ("none", ...; see radio.normalize).
    """

    summary_weight: float = 1.0
    feature_weight: float = 1.0
    normalizer: str = "none"

    def spec(self) -> TeacherSpec:
        """The TeacherSpec part (what `teachers.build` takes)."""
        names = {f.name for f in dataclasses.fields(TeacherSpec)}
        return TeacherSpec(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay, stepped every optimizer step.

    Args:
        lr: peak learning rate.
        weight_decay: decoupled weight decay (not applied to norms, biases, tokens, position grid).
        betas: AdamW betas.
        warmup_steps: linear warm-up length.
        min_lr_ratio: final learning rate as a fraction of `lr`.
    """

    lr: float = 1e-3
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0


def coerce(cls: Type[T], value: Any, where: str) -> T:
    """Accept a dataclass instance or a dict (e.g. from a checkpoint's hyper-parameters)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**value)
    raise TypeError(f"{where}: expected {cls.__name__} or dict, got {type(value).__name__}")


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples -> plain dicts/lists (safe to store in a weights_only checkpoint)."""
    if dataclasses.is_dataclass(obj):
        return {k: to_plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
