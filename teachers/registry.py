"""Teacher registry: names -> builders, and `build(spec)`.

A builder takes a TeacherSpec and returns an unfrozen Teacher; `build` seeds random initialisation, freezes the
teacher and checks the result.

A family declares the options that make it run code shipped with a model (hf: trust_remote_code). Only the user
may turn those on, in a recipe or a config file of their own: a spec read from any other file (an export's
provenance, a checkpoint) goes through `untrusted_spec`, which refuses them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from radio.registry import Registry
from radio.schema import SchemaError, from_dict
from teachers.base import Teacher, TeacherSpec

TEACHERS: Registry[Callable[[TeacherSpec], Teacher]] = Registry("teacher")
# family -> its options that run code shipped with the model (see untrusted_spec)
CODE_RUNNING_OPTIONS: dict[str, tuple[str, ...]] = {}


class UntrustedSpecError(ValueError):
    """A teacher spec read from a file the user did not write that is malformed or would run code."""


def register_teacher(name: str, code_running_options: Sequence[str] = ()) -> Callable:
    """Decorator: register a builder `fn(spec) -> Teacher` under `name`.

    code_running_options: the family's options that, when true, run code shipped with the model (hf:
        trust_remote_code); `untrusted_spec` refuses them.
    """
    add = TEACHERS.register(name)

    def _add(fn: Callable[[TeacherSpec], Teacher]) -> Callable[[TeacherSpec], Teacher]:
        fn = add(fn)  # a duplicate name fails here, before the family's options are recorded
        CODE_RUNNING_OPTIONS[name] = tuple(code_running_options)
        return fn

    return _add


def available() -> list[str]:
    return TEACHERS.names()


def as_spec(name_or_config: str | TeacherSpec | dict[str, Any], *, where: str = "teacher",
            **overrides: Any) -> TeacherSpec:
    """A TeacherSpec from a registered name, a dict (radio.schema.from_dict: unknown keys and wrong types are
    a SchemaError naming `where`.key) or a TeacherSpec (as it is); fields overridable by keyword."""
    if isinstance(name_or_config, TeacherSpec):
        spec = name_or_config
    elif isinstance(name_or_config, str):
        spec = TeacherSpec(name=name_or_config)
    elif isinstance(name_or_config, dict):
        spec = from_dict(TeacherSpec, name_or_config, where)
    else:
        raise TypeError(f"teacher config must be a name, dict or TeacherSpec, got {type(name_or_config).__name__}")
    return dataclasses.replace(spec, **overrides) if overrides else spec


def build(name_or_config: str | TeacherSpec | dict[str, Any], **overrides: Any) -> Teacher:
    """Build a frozen teacher from a registered name, a dict or a TeacherSpec (fields overridable by keyword).

    Example: `teachers.build("dino_v2", pretrained=False, arch={"embed_dim": 64, "depth": 2, "num_heads": 2})`.
    """
    spec = as_spec(name_or_config, **overrides)
    builder = TEACHERS.get(spec.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        teacher = builder(spec)
    teacher.name = spec.name
    teacher.spec = spec
    return teacher.freeze()


def untrusted_spec(spec: TeacherSpec | dict[str, Any], source: str) -> TeacherSpec:
    """A teacher spec read from a file the user did not write (an export's provenance, a checkpoint), as radio
    may build it.

    A spec that turns on one of its family's code-running options (CODE_RUNNING_OPTIONS, e.g. hf's
    `trust_remote_code: true`) is refused with an UntrustedSpecError naming `source` and the key; otherwise those
    options are pinned to False, so that the build runs no code shipped with the model (an hf `model` directory
    holding an `auto_map` module included). A malformed spec (radio.schema: unknown keys, wrong types) is
    refused the same way.

    Args:
        source: where the spec was read, for the error (e.g. `EXPORT/config.json: provenance.teacher_specs[2]`).
    """
    try:
        if isinstance(spec, TeacherSpec):  # its fields are checked as a file's would be
            from_dict(TeacherSpec, spec, "")
        spec = as_spec(spec, where="")
    except SchemaError as e:
        raise UntrustedSpecError(str(e.prefixed(source))) from e
    except TypeError as e:
        raise UntrustedSpecError(f"{source}: {e}") from e
    risky = CODE_RUNNING_OPTIONS.get(spec.name, ())
    options = dict(spec.options or {})
    for key in risky:
        if options.get(key) not in (None, False):
            raise UntrustedSpecError(
                f"{source}: teacher {spec.name!r} sets options.{key}: {options[key]!r}, which would run Python code "
                f"shipped with its model ({spec.model or 'the default model'}); radio runs no code named by a file "
                f"you did not write, such as an export's provenance or a checkpoint. If you trust that code, put the "
                f"teacher's spec in a config file of your own (a recipe, or a teacher .yaml for `radio eval --model`)")
    if not risky:
        return spec
    return dataclasses.replace(spec, options={**options, **{k: False for k in risky}})
