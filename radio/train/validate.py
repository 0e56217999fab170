"""Recipe validation that runs before anything is built or computed.

Checks: teacher names are registered and unique, normalizer names are registered, the student architecture
resolves, every training resolution (single `data.resolution` or every partition of `data.stages`) and every
fidelity resolution is a multiple of the student's patch size and within its max_resolution, stages are well
formed (steps, batch sizes, partition teachers that exist), `data.resolution`/`data.batch_size` and
`data.stages` are not mixed, every shard pattern matches files, and a `data.cache` holds, for every teacher it
reads, a cache written for that teacher (meta.json) with a feature shard per training shard. Errors name the
field or path.
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


def _resolution_errors(field: str, res: Any, patch: int, max_res: int) -> list[str]:
    if not isinstance(res, int) or res < 1:
        return [f"{field}: must be a positive number of pixels, got {res!r}"]
    if patch and res % patch:
        lo, hi = max(patch, res // patch * patch), -(-res // patch) * patch
        return [f"{field}: {res} is not a multiple of the student's patch size {patch} (nearest valid: {lo} or {hi})"]
    if max_res and res > max_res:
        return [f"{field}: {res} exceeds model.student.max_resolution {max_res}"]
    return []


def _cache_errors(entries: list[Any], patch: int, data_args: Any, urls: Any) -> list[str]:
    import dataclasses

    from radio.data.cached import cache_errors, main_resolution
    from teachers.base import TeacherSpec

    def plain(v: Any) -> Any:
        return v.as_dict() if hasattr(v, "as_dict") else v

    fields = dataclasses.fields(TeacherSpec)
    specs = {_get(t, "name"): {f.name: plain(_get(t, f.name, f.default)) for f in fields} for t in entries}
    mosaic = {_get(t, "name"): bool(_get(t, "mosaic", False)) for t in entries}
    grid = (main_resolution(data_args) // patch,) * 2
    return cache_errors(_get(data_args, "cache"), specs, mosaic, grid, urls)


def validate_recipe(cfg: Any) -> None:
    """Validate a resolved fit config (jsonargparse Namespace or nested dicts with `model` and `data`)."""
    import teachers as teacher_lib
    from radio.data.schedule import schedule_errors
    from radio.data.shards import resolve_shards
    from radio.model.vit import StudentConfig
    from radio.normalize import NORMALIZERS

    model, data = _get(cfg, "model"), _get(cfg, "data")
    model_args = _get(model, "init_args", model)
    data_args = _get(data, "init_args", data)
    errors: list[str] = []

    valid = teacher_lib.available()
    entries = _get(model_args, "teachers") or []
    if not entries:
        errors.append("model.teachers: at least one teacher is needed")
    seen: list[str] = []
    for i, t in enumerate(entries):
        name = _get(t, "name")
        if name not in valid:
            errors.append(f"model.teachers[{i}].name: unknown teacher {name!r}; valid: {', '.join(valid)}")
        if name in seen:
            errors.append(f"model.teachers[{i}].name: {name!r} appears more than once")
        seen.append(name)
        norm = _get(t, "normalizer", "none")
        if norm not in NORMALIZERS:
            errors.append(f"model.teachers[{i}].normalizer: unknown normalizer {norm!r}; valid: "
                          f"{', '.join(NORMALIZERS.names())}")

    student = _get(model_args, "student")
    patch = _get(student, "patch_size", 16)
    try:
        fields = {k: _get(student, k) for k in StudentConfig.__dataclass_fields__ if _get(student, k) is not None}
        StudentConfig(**fields).resolved()
    except (ValueError, TypeError) as e:
        errors.append(f"model.student: {e}")
    max_res = _get(student, "max_resolution", 2048)

    stages = _get(data_args, "stages")
    res, bs = _get(data_args, "resolution"), _get(data_args, "batch_size")
    if stages:
        if res is not None or bs is not None:
            errors.append("data.stages: give either data.resolution/data.batch_size (one partition) or data.stages, "
                          "not both")
        errors += schedule_errors(list(stages), patch, max_res, seen)
    elif res is not None:
        errors += _resolution_errors("data.resolution", res, patch, max_res)
    val_res = _get(data_args, "val_resolution")
    if val_res is not None:
        errors += _resolution_errors("data.val_resolution", val_res, 0, 0)

    validation = _get(model_args, "validation")
    for j, r in enumerate(_get(validation, "resolutions") or []):
        errors += _resolution_errors(f"model.validation.resolutions[{j}]", r, patch, max_res)
    est = _get(_get(model_args, "normalization"), "estimate_steps", 1)
    if est is not None and est < 1:
        errors.append(f"model.normalization.estimate_steps: must be >= 1, got {est}")

    urls = None
    for key in ("shards", "val_shards"):
        spec = _get(data_args, key)
        if spec is None and key == "val_shards":
            continue
        try:
            found = resolve_shards(spec, f"data.{key}")
            urls = found if key == "shards" else urls
        except FileNotFoundError as e:
            errors.append(str(e))
    if _get(data_args, "cache") is not None:
        errors += _cache_errors(entries, patch, data_args, urls)

    if errors:
        raise ConfigError("invalid recipe:\n  " + "\n  ".join(errors))
