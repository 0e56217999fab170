"""Teacher registry: names -> builders, and `build(spec)`.

A builder takes a TeacherSpec and returns an unfrozen Teacher; `build` seeds random initialisation, freezes the
teacher and checks the result.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import torch

from radio.registry import Registry
from teachers.base import Teacher, TeacherSpec

TEACHERS: Registry[Callable[[TeacherSpec], Teacher]] = Registry("teacher")


def register_teacher(name: str) -> Callable:
    """Decorator: register a builder `fn(spec) -> Teacher` under `name`."""
    return TEACHERS.register(name)


def available() -> list[str]:
    _load_families()
    return TEACHERS.names()


def as_spec(name_or_config: Union[str, TeacherSpec, dict[str, Any]], **overrides: Any) -> TeacherSpec:
    if isinstance(name_or_config, TeacherSpec):
        spec = name_or_config
    elif isinstance(name_or_config, str):
        spec = TeacherSpec(name=name_or_config)
    elif isinstance(name_or_config, dict):
        known = {f.name for f in dataclasses.fields(TeacherSpec)}
        unknown = sorted(set(name_or_config) - known)
        if unknown:
            raise ValueError(f"teacher config: unknown key(s) {unknown}; allowed: {sorted(known)}")
        spec = TeacherSpec(**name_or_config)
    else:
        raise TypeError(f"teacher config must be a name, dict or TeacherSpec, got {type(name_or_config).__name__}")
    return dataclasses.replace(spec, **overrides) if overrides else spec


def build(name_or_config: Union[str, TeacherSpec, dict[str, Any]], **overrides: Any) -> Teacher:
    """Build a frozen teacher from a registered name, a dict or a TeacherSpec (fields overridable by keyword).

    Example: `teachers.build("dino_v2", pretrained=False, arch={"embed_dim": 64, "depth": 2, "num_heads": 2})`.
    """
    _load_families()
    spec = as_spec(name_or_config, **overrides)
    builder = TEACHERS.get(spec.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        teacher = builder(spec)
    teacher.name = spec.name
    teacher.spec = spec
    return teacher.freeze()


_LOADED = False


def _load_families() -> None:
    """Import the adapters so they register themselves (their libraries are imported lazily inside)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from teachers import dinov2, hf, open_clip, sam  # noqa: F401
