"""A recipe's side of the feature cache: the `data.cache` section (CacheConfig), the teachers' specs and the
student grid the cache is written for. `radio cache` (radio.cache.writer.cache_recipe) and the checks of a
recipe (radio.cache.checks) read them here, so that a cache is checked against what it was written from."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from radio.ranges import PROBABILITY, range_errors
from radio.schema import from_dict

SUMMARY_MODES = ("exact", "approximate")


@dataclass
class CacheConfig:
    """Where the feature cache is and how training reads it.

    Args:
        dir: the directory `radio cache --out DIR` wrote (one folder per teacher).
        teachers: teachers read from the cache; None means every teacher of the recipe. The others run online.
        align: the teacher whose cells the random crops are drawn in (exact for it); None: the coarsest grid.
        summary: "exact": a cached summary target only for samples that see the whole canvas unflipped;
            "approximate": the whole canvas's summary for every crop and flip.
        whole_view: probability that a sample sees the whole canvas, unflipped (its summary target is exact).
    """

    dir: str
    teachers: list[str] | None = None
    align: str | None = None
    summary: str = "exact"
    whole_view: float = 0.25

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        """Problems of the fields `values` (radio.schema): a directory, a summary mode, a probability. Whether
        `align` is a cached teacher needs the recipe (radio.cache.checks.config_errors)."""
        errors = []
        if not values["dir"]:
            errors.append(f"{where}.dir: required (the directory `radio cache --out DIR` wrote)")
        if values["summary"] not in SUMMARY_MODES:
            errors.append(f"{where}.summary: must be one of {SUMMARY_MODES}, got {values['summary']!r}")
        return errors + range_errors(f"{where}.whole_view", values["whole_view"], PROBABILITY)


def coerce_config(cfg: Any) -> CacheConfig:
    """A `data.cache` section (CacheConfig, mapping or jsonargparse Namespace) as a checked CacheConfig;
    a SchemaError (a ValueError) names every problem."""
    if hasattr(cfg, "as_dict"):  # jsonargparse Namespace
        cfg = cfg.as_dict()
    return from_dict(CacheConfig, cfg, "data.cache")


def get_field(obj: Any, key: str, default: Any = None) -> Any:
    """A recipe field of a mapping (plain YAML) or an object (a jsonargparse Namespace)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def main_resolution(data: Any) -> int:
    """The recipe's main training resolution (final stage, first partition; else data.resolution or 224), as
    the datamodule computes it: the student grid the cache is written for."""
    stages = get_field(data, "stages")
    if stages:
        return int(get_field(get_field(stages[-1], "partitions")[0], "resolution"))
    return int(get_field(data, "resolution") or 224)


def main_grid(data: Any, patch: int) -> tuple[int, int]:
    """The main student grid (`main_resolution` / patch cells per side) that the cache is written for."""
    return (main_resolution(data) // patch,) * 2


def teacher_specs(entries: list[Any]) -> dict[str, dict[str, Any]]:
    """A recipe's `model.teachers` entries -> name -> every TeacherSpec field (plain values), in recipe order."""
    from teachers.base import TeacherSpec

    def plain(v: Any) -> Any:
        return v.as_dict() if hasattr(v, "as_dict") else v

    fields = dataclasses.fields(TeacherSpec)
    return {get_field(t, "name"): {f.name: plain(get_field(t, f.name, f.default)) for f in fields} for t in entries}


def teacher_mosaic(entries: list[Any]) -> dict[str, bool]:
    """A recipe's `model.teachers` entries -> name -> the entry's `mosaic` flag."""
    return {get_field(t, "name"): bool(get_field(t, "mosaic", False)) for t in entries}
