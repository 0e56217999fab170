"""Multi-resolution schedule: stages of partitions, as a recipe declares them.

A *partition* is one batch at one resolution, with the teachers that supervise it and a loss weight; every
training step draws one batch per partition of the current *stage*. Stages run one after another for a number
of optimizer steps each (the last runs to the end). RADIOv2.5 trains 256 -> 432 -> (432 + 1024):

    stages:
      - {steps: 30000, partitions: [{resolution: 256, batch_size: 128}]}
      - {steps: 30000, partitions: [{resolution: 432, batch_size: 96}]}
      - {partitions: [{resolution: 432, batch_size: 96}, {resolution: 1024, batch_size: 32}]}

References: RADIOv2.5 (Heinrich et al., 2024), multi-resolution training and mode switching.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radio.ranges import COUNT, NON_NEGATIVE, OPTIONAL_COUNT, range_errors
from radio.schema import SchemaError, parse


@dataclass
class PartitionConfig:
    """One batch per step at one resolution.

    Args:
        resolution: square input side in pixels (a multiple of the student's patch size).
        batch_size: images in this partition's batch per device.
        teachers: names of the teachers matched on this partition; None means every teacher.
        weight: multiplies this partition's loss.
    """

    resolution: int = 224
    batch_size: int = 32
    teachers: list[str] | None = None
    weight: float = 1.0


@dataclass
class StageConfig:
    """Partitions trained together for `steps` optimizer steps (None: until the end of training; last stage)."""

    partitions: list[PartitionConfig] = field(default_factory=list)
    steps: int | None = None


@dataclass
class Schedule:
    """The stages in order; `stage_at(step)` says which one a (0-based) step belongs to."""

    stages: list[StageConfig]

    def __post_init__(self) -> None:
        self.stages = parse(list[StageConfig], list(self.stages), "data.stages")  # mappings or StageConfigs
        errors = schedule_errors(self.stages)
        if errors:
            raise SchemaError(errors)

    @classmethod
    def single(cls, resolution: int, batch_size: int) -> Schedule:
        return cls([StageConfig([PartitionConfig(resolution, batch_size)])])

    def stage_index(self, step: int) -> int:
        end = 0
        for i, s in enumerate(self.stages):
            if s.steps is None:
                return i
            end += s.steps
            if step < end:
                return i
        return len(self.stages) - 1

    def stage_at(self, step: int) -> StageConfig:
        return self.stages[self.stage_index(step)]

    def resolutions(self) -> list[int]:
        """Every partition resolution of every stage, ascending, without repeats."""
        return sorted({p.resolution for s in self.stages for p in s.partitions})

    @property
    def final(self) -> StageConfig:
        return self.stages[-1]


def resolution_errors(field: str, res: Any, patch: int | None, max_res: int | None) -> list[str]:
    """Problems of one resolution field: a positive int, a multiple of the patch size, within the maximum."""
    if not COUNT.accepts(res):
        return [f"{field}: must be a positive number of pixels (an integer >= 1), got {res!r}"]
    if patch and res % patch:
        lo, hi = max(patch, res // patch * patch), -(-res // patch) * patch
        return [f"{field}: {res} is not a multiple of the student's patch size {patch} (nearest valid: {lo} or {hi})"]
    if max_res and res > max_res:
        return [f"{field}: {res} exceeds model.student.max_resolution {max_res}"]
    return []


def schedule_errors(stages: list[Any], patch: int | None = None, max_resolution: int | None = None,
                    teacher_names: list[str] | None = None) -> list[str]:
    """Problems of a stage list, each naming its field (empty when the schedule is valid)."""
    errors: list[str] = []
    if not stages:
        return ["data.stages: at least one stage is needed"]
    get = (lambda o, k: o.get(k) if isinstance(o, dict) else getattr(o, k, None))
    for i, s in enumerate(stages):
        where = f"data.stages[{i}]"
        steps = get(s, "steps")
        if i < len(stages) - 1 and not COUNT.accepts(steps):
            errors.append(f"{where}.steps: every stage but the last needs an integer steps >= 1, got {steps!r}")
        else:
            errors += range_errors(f"{where}.steps", steps, OPTIONAL_COUNT)
        parts = get(s, "partitions") or []
        if not parts:
            errors.append(f"{where}.partitions: at least one partition is needed")
        for j, p in enumerate(parts):
            pw = f"{where}.partitions[{j}]"
            res, bs, names = get(p, "resolution"), get(p, "batch_size"), get(p, "teachers")
            errors += resolution_errors(f"{pw}.resolution", res, patch, max_resolution)
            errors += range_errors(f"{pw}.batch_size", bs, COUNT)
            if names is not None and not isinstance(names, (list, tuple)):
                errors.append(f"{pw}.teachers: must be a list of teacher names, got {names!r}")
            elif names is not None:
                if not names:
                    errors.append(f"{pw}.teachers: empty list; omit it to use every teacher")
                for n in names:
                    if teacher_names is not None and n not in teacher_names:
                        errors.append(f"{pw}.teachers: {n!r} is not a teacher of this recipe "
                                      f"({', '.join(teacher_names)})")
            if not isinstance(p, dict) or "weight" in p:  # a plain recipe may leave it out (default 1.0)
                errors += range_errors(f"{pw}.weight", get(p, "weight"), NON_NEGATIVE)
    return errors
