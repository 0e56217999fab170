"""Recipe schemas of the training loop (LightningCLI reads these type hints; unknown keys are rejected).

Each section states its allowed values in a `check` classmethod (radio.schema, radio.ranges): `coerce` (what
the module's constructor does with a section) and the recipe checks (radio.train.recipe_checks) run the same.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from radio.ranges import (
    COUNT,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    PROBABILITY,
    Range,
    fields_errors,
    range_errors,
)
from radio.schema import from_dict
from teachers.base import TeacherSpec

T = TypeVar("T")
BETA = Range(lo=0, hi=1, hi_open=True)  # each of AdamW's betas


@dataclass
class TeacherEntry(TeacherSpec):
    """A teacher in a recipe: how to build it (TeacherSpec) and how it weighs in the loss.

    Args:
        summary_weight: weight of the summary (1 - cos) loss; ignored for teachers without a summary.
        feature_weight: weight of the feature loss.
        normalizer: normalizer of the teacher's features: "none", "global_std", "channel_std", "pca_whiten" or
            "phis" (see radio.normalize).
        mosaic: for a fixed-canvas teacher, run it on a k x k mosaic of a low-resolution partition's images
            wherever at least two tiles fit in its canvas (radio.mosaic); its summary loss is then skipped there.
    """

    summary_weight: float = 1.0
    feature_weight: float = 1.0
    normalizer: str = "none"
    mosaic: bool = False

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        """The loss weights are >= 0 (radio.schema)."""
        return fields_errors(where, values, {"summary_weight": NON_NEGATIVE, "feature_weight": NON_NEGATIVE})

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

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        """Range problems of the fields `values` (radio.schema), each naming its field."""
        errors = fields_errors(where, values, {"lr": POSITIVE, "weight_decay": NON_NEGATIVE,
                                               "warmup_steps": NON_NEGATIVE_INT, "min_lr_ratio": PROBABILITY})
        for i, b in enumerate(values["betas"]):
            errors += range_errors(f"{where}.betas[{i}]", b, BETA)
        return errors


@dataclass
class NormalizationConfig:
    """When the teachers' normalizers learn their statistics.

    Args:
        estimate_steps: the statistics stream over the first `estimate_steps` optimizer steps (every partition,
            every rank), are refitted whenever the step count reaches a power of two, and are frozen after the
            last of these steps (RADIOv2.5 estimates over the first ~3000 steps).
    """

    estimate_steps: int = 3000

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        return fields_errors(where, values, {"estimate_steps": COUNT})


@dataclass
class StabilityConfig:
    """What a run does when the loss goes non-finite.

    Args:
        max_nonfinite_steps: a step whose loss is non-finite on any rank is skipped (no parameter update); after
            this many such steps in a row the run saves a checkpoint and stops, naming the teacher and partition
            terms that went non-finite.
    """

    max_nonfinite_steps: int = 5

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        return fields_errors(where, values, {"max_nonfinite_steps": COUNT})


@dataclass
class ValidationConfig:
    """Fidelity validation (mode switching).

    Args:
        resolutions: input sides (pixels, multiples of the student's patch) at which fidelity and cos-error are
            measured for every teacher; None means every training partition resolution.
    """

    resolutions: list[int] | None = None


def coerce(cls: type[T], value: Any, where: str) -> T:
    """A section given as a dataclass instance or a dict (e.g. a checkpoint's hyper-parameters), checked:
    radio.schema.from_dict (unknown keys, types, the section's `check`); a SchemaError names every problem."""
    return from_dict(cls, value, where)


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples -> plain dicts/lists (safe to store in a weights_only checkpoint)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def coerce_teachers(teachers: Any, where: str) -> list[TeacherEntry]:
    """A recipe's teachers (TeacherEntry instances or dicts, `coerce`d): at least one, names unique."""
    entries = [coerce(TeacherEntry, t, f"{where}[{i}]") for i, t in enumerate(teachers)]
    if not entries:
        raise ValueError(f"{where}: at least one teacher is needed")
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: name(s) {dup} appear more than once")
    return entries
