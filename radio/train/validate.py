"""Recipe validation that runs before anything is built or computed.

Checks: teacher names are registered and unique, the student architecture resolves, the data resolution is a
multiple of the student's patch size, and every shard pattern matches files. Errors name the field or path.
"""
from __future__ import annotations

from typing import Any, Mapping


class ConfigError(ValueError):
    """A recipe that cannot run; the message names the field or path."""


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def validate_recipe(cfg: Any) -> None:
    """Validate a resolved fit config (jsonargparse Namespace or nested dicts with `model` and `data`)."""
    import teachers as teacher_lib
    from radio.data.shards import resolve_shards
    from radio.model.vit import StudentConfig

    model, data = _get(cfg, "model"), _get(cfg, "data")
    model_args = _get(model, "init_args", model)
    data_args = _get(data, "init_args", data)
    errors: list[str] = []

    valid = teacher_lib.available()
    entries = _get(model_args, "teachers") or []
    if not entries:
        errors.append("model.teachers: at least one teacher is needed")
    seen: set[str] = set()
    for i, t in enumerate(entries):
        name = _get(t, "name")
        if name not in valid:
            errors.append(f"model.teachers[{i}].name: unknown teacher {name!r}; valid: {', '.join(valid)}")
        if name in seen:
            errors.append(f"model.teachers[{i}].name: {name!r} appears more than once")
        seen.add(name)

    student = _get(model_args, "student")
    patch = _get(student, "patch_size", 16)
    try:
        fields = {k: _get(student, k) for k in StudentConfig.__dataclass_fields__ if _get(student, k) is not None}
        StudentConfig(**fields).resolved()
    except (ValueError, TypeError) as e:
        errors.append(f"model.student: {e}")

    res = _get(data_args, "resolution")
    if res is not None and patch and res % patch:
        lo, hi = max(patch, res // patch * patch), -(-res // patch) * patch
        errors.append(f"data.resolution: {res} is not a multiple of the student's patch size {patch} "
                      f"(nearest valid: {lo} or {hi})")
    max_res = _get(student, "max_resolution", 2048)
    if res is not None and max_res and res > max_res:
        errors.append(f"data.resolution: {res} exceeds model.student.max_resolution {max_res}")

    for key in ("shards", "val_shards"):
        spec = _get(data_args, key)
        if spec is None and key == "val_shards":
            continue
        try:
            resolve_shards(spec, f"data.{key}")
        except FileNotFoundError as e:
            errors.append(str(e))

    if errors:
        raise ConfigError("invalid recipe:\n  " + "\n  ".join(errors))
