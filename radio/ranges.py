"""Allowed ranges of recipe values, and the one check that names a field and its range.

`Range` describes what a field accepts (an integer or a finite number, bounds, open or closed, extra allowed
values such as -1, whether None means "use the default"); `range_errors(field, value, rng)` gives the problem of
one value ("data.batch_size: must be an integer >= 1, got 0"), and `fields_errors(where, obj, ranges)` those of
every field of a section present in a plain mapping, a jsonargparse Namespace or a dataclass.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Values a field accepts.

    Args:
        lo, hi: bounds (None: unbounded on that side).
        lo_open, hi_open: the bound itself is excluded.
        integer: integers only (bools are not integers here); otherwise any finite number.
        optional: None is accepted (the field's default applies).
        also: further accepted values outside the bounds (e.g. -1 for "all" / "unlimited").
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    optional: bool = False
    also: tuple = ()

    def describe(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            text = f"{what} in {left}{self.lo:g}, {self.hi:g}{right}"
        elif self.lo is not None:
            text = f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        elif self.hi is not None:
            text = f"{what} {'<' if self.hi_open else '<='} {self.hi:g}"
        else:
            text = what
        return text + "".join(f" or {a!r}" for a in self.also)

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if value in self.also:
            return True
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True


COUNT = Range(lo=1, integer=True)  # steps, batch sizes, depths, intervals
OPTIONAL_COUNT = Range(lo=1, integer=True, optional=True)
NON_NEGATIVE_INT = Range(lo=0, integer=True)
OPTIONAL_NON_NEGATIVE_INT = Range(lo=0, integer=True, optional=True)
POSITIVE = Range(lo=0, lo_open=True)
NON_NEGATIVE = Range(lo=0)
PROBABILITY = Range(lo=0, hi=1)


def range_errors(field: str, value: Any, rng: Range) -> list[str]:
    """[] when `value` is in `rng`, else one line naming the field, the allowed range and the value."""
    if rng.accepts(value):
        return []
    return [f"{field}: must be {rng.describe()}, got {value!r}"]


def _get(obj: Any, key: str) -> tuple[bool, Any]:
    if isinstance(obj, Mapping):
        return key in obj, obj.get(key)
    return hasattr(obj, key), getattr(obj, key, None)  # a jsonargparse Namespace or a dataclass


def fields_errors(where: str, obj: Any, ranges: Mapping[str, Range]) -> list[str]:
    """The range errors of every field of `ranges` that `obj` (mapping, Namespace or dataclass) holds."""
    if obj is None:
        return []
    errors: list[str] = []
    for name, rng in ranges.items():
        present, value = _get(obj, name)
        if present:
            errors += range_errors(f"{where}.{name}" if where else name, value, rng)
    return errors
