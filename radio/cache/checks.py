"""Every check of a feature cache, one copy each: against a teacher spec and resolution (`check_cache_meta`),
against a student grid (`check_cache_for_grid`), the training shards (`shard_errors`), a recipe's `data.cache`
before any compute (`cache_errors`, `recipe_cache_errors`) and the built teachers at fit start
(`check_against_teachers`). Errors name meta.json, the shard or the recipe field."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radio.cache.config import CacheConfig, coerce_config, get_field, main_grid, teacher_mosaic, teacher_specs
from radio.cache.format import (
    DTYPES,
    FORMAT_VERSION,
    SPEC_FIELDS,
    CacheMismatchError,
    cached_folders,
    expected_resolution,
    read_cache_meta,
)
from radio.schema import SchemaError
from teachers.base import TeacherSpec
from teachers.registry import as_spec

if TYPE_CHECKING:
    from radio.cache.reader import CacheLayout


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def check_cache_meta(directory: str | Path, spec: TeacherSpec | dict | str,
                     resolution: tuple[int, int]) -> dict[str, Any]:
    """The metadata of the cache in `directory` if it was written for `spec` at `resolution`, else an error.

    Compared: every TeacherSpec field (name, model, pretrained, arch, input_size, seed, options), the
    resolution and the format version. The error names meta.json and each differing field with both values.
    """
    path = Path(directory) / "meta.json"
    meta = read_cache_meta(directory)
    want = dataclasses.asdict(as_spec(spec))
    have = meta.get("spec") or {}
    diffs = [f"{f}: cache {have.get(f)!r} != recipe {_plain(want[f])!r}" for f in SPEC_FIELDS
             if _plain(have.get(f)) != _plain(want[f])]
    if list(meta.get("resolution", [])) != list(resolution):
        diffs.append(f"resolution: cache {meta.get('resolution')} != recipe {list(resolution)}")
    if meta.get("format_version") != FORMAT_VERSION:
        diffs.append(f"format_version: cache {meta.get('format_version')!r} != reader {FORMAT_VERSION}")
    if diffs:
        raise CacheMismatchError(f"feature cache {path} was not written for teacher {want['name']!r} at "
                                 f"{resolution[0]}x{resolution[1]}: " + "; ".join(diffs))
    return meta


def check_cache_for_grid(directory: str | Path, spec: TeacherSpec | dict | str,
                         student_grid: tuple[int, int]) -> dict[str, Any]:
    """The metadata of a teacher's cache if it is what `cache_teachers` writes for `spec` and a student grid.

    On top of `check_cache_meta` (every spec field, the resolution, the format version): a known dtype, at least
    one sample, and recorded shapes that agree with the teacher's description (patch size, floor(resolution /
    patch) cells, feature and summary widths). Errors name meta.json and every problem.
    """
    meta = read_cache_meta(directory)
    meta = check_cache_meta(directory, spec, expected_resolution(meta.get("teacher") or {}, student_grid))
    path, teacher = Path(directory) / "meta.json", meta["teacher"]
    p, res = int(teacher["patch_size"]), meta["resolution"]
    grid = [res[0] // p, res[1] // p]
    problems = []
    if meta.get("dtype") not in DTYPES:
        problems.append(f"dtype {meta.get('dtype')!r} is not one of {sorted(DTYPES)}")
    if not meta.get("count"):
        problems.append("no cached sample (count 0)")
    if meta.get("patch_size") != p:
        problems.append(f"patch_size {meta.get('patch_size')} != the teacher's {p}")
    if meta.get("features_shape") != [teacher["feature_dim"], *grid]:
        problems.append(f"features_shape {meta.get('features_shape')} != [{teacher['feature_dim']}, {grid[0]}, "
                        f"{grid[1]}] (feature width, floor(resolution / patch) cells)")
    want_summary = [teacher["summary_dim"]] if teacher.get("summary_dim") else None
    if meta.get("summary_shape") != want_summary:
        problems.append(f"summary_shape {meta.get('summary_shape')} != {want_summary}")
    if problems:
        raise CacheMismatchError(f"feature cache {path}: " + "; ".join(problems))
    return meta


def shard_errors(directory: str, meta: dict[str, Any], image_urls: list[str]) -> list[str]:
    """Training shards without a feature shard of the same name in a teacher's cache `directory`, or whose size
    differs from the one the cache was written from (another shard of the same name)."""
    missing = [u for u in image_urls if not os.path.isfile(os.path.join(directory, os.path.basename(u)))]
    sizes = meta.get("source_bytes") or {}
    other = [u for u in image_urls if u not in missing and os.path.isfile(u)
             and sizes.get(os.path.basename(u), os.path.getsize(u)) != os.path.getsize(u)]
    errors = []
    if missing:
        errors.append(f"feature cache {directory}: no feature shard for {len(missing)} training shard(s), e.g. "
                      f"{missing[0]} (run `radio cache` on these shards)")
    if other:
        u = other[0]
        errors.append(f"feature cache {directory}: {len(other)} training shard(s) are not the ones it was written "
                      f"from, e.g. {u} ({os.path.getsize(u)} bytes; the cached {os.path.basename(u)} had "
                      f"{sizes[os.path.basename(u)]})")
    return errors


def missing_dir_error(cfg: CacheConfig) -> str | None:
    """The error of a `data.cache.dir` that does not exist, else None."""
    if cfg.dir and os.path.isdir(cfg.dir):
        return None
    return (f"data.cache.dir: {cfg.dir!r} does not exist (write it with `radio cache --config RECIPE "
            f"--out {cfg.dir or 'DIR'}`)")


def config_errors(cfg: CacheConfig, names: list[str]) -> list[str]:
    """The `align` of a `data.cache` section that is not one of the cached teachers `names` (the section's
    other values are checked when it is read: CacheConfig.check)."""
    if cfg.align is not None and cfg.align not in names:
        return [f"data.cache.align: {cfg.align!r} is not a cached teacher ({', '.join(names)})"]
    return []


def mosaic_error(name: str) -> str:
    """The error of a cached teacher with mosaic on (a cached teacher is read, not run)."""
    return (f"model.teachers ({name}): mosaic and data.cache exclude each other (a cached teacher is read, not "
            "run); set mosaic: false or leave it out of data.cache.teachers")


def grid_error(directory: str, spec: Any, student_grid: tuple[int, int]) -> str | None:
    """`check_cache_for_grid`'s error as a message (a missing meta.json included), else None."""
    try:
        check_cache_for_grid(directory, spec, student_grid)
    except (CacheMismatchError, FileNotFoundError) as e:
        return str(e)
    return None


def cache_errors(cfg: Any, specs: dict[str, Any], mosaic: dict[str, bool], student_grid: tuple[int, int],
                 image_urls: list[str] | None) -> list[str]:
    """Problems of a recipe's `data.cache` (empty when training can read it), checked before any compute.

    Args:
        cfg: the data.cache section.
        specs: the recipe's teachers, name -> TeacherSpec (or its dict), in recipe order.
        mosaic: name -> the teacher entry's `mosaic` flag.
        student_grid: the recipe's main student grid (final stage, first partition).
        image_urls: the resolved training shards (None when they did not resolve).
    """
    try:
        cfg = coerce_config(cfg)
    except SchemaError as e:
        return e.errors
    errors = []
    unknown = [n for n in (cfg.teachers or []) if n not in specs]
    if unknown:
        errors.append(f"data.cache.teachers: {unknown} not teachers of this recipe ({', '.join(specs)})")
    names = [n for n in (cfg.teachers if cfg.teachers is not None else specs) if n in specs]
    errors += config_errors(cfg, names)
    missing = missing_dir_error(cfg)
    if missing:
        return errors + [missing]
    if cfg.teachers is None:
        extra = [n for n in cached_folders(cfg.dir) if n not in specs]
        if extra:
            errors.append(f"data.cache.dir: {cfg.dir} also caches {extra}, not teachers of this recipe; list the "
                          f"cached teachers in data.cache.teachers")
    for name in names:
        directory = os.path.join(cfg.dir, name)
        if mosaic.get(name):
            errors.append(mosaic_error(name))
        error = grid_error(directory, specs[name], student_grid)
        if error:
            errors.append(error)
            continue
        errors += shard_errors(directory, read_cache_meta(directory), image_urls or [])
    return errors


def recipe_cache_errors(entries: list[Any], patch: int, data: Any, image_urls: list[str] | None) -> list[str]:
    """`cache_errors` of a recipe: its `model.teachers` entries, the student's patch size, its data section (dict
    or Namespace, with `cache`) and the resolved training shards (None when they did not resolve)."""
    return cache_errors(get_field(data, "cache"), teacher_specs(entries), teacher_mosaic(entries),
                        main_grid(data, patch), image_urls)


def check_against_teachers(layout: CacheLayout, teachers: dict[str, Any], specs: dict[str, Any],
                           mosaic: dict[str, bool], student_grid: tuple[int, int]) -> None:
    """At fit start: the datamodule's cache against the module's teachers (built) and their specs.

    Raises CacheMismatchError listing every problem: a cached teacher the recipe does not have, a required one
    missing, a spec or resolution that differs (`check_cache_for_grid`), a built teacher whose description
    differs from the cache's (e.g. another library version), mosaic on a cached teacher.
    """
    problems = [f"data.cache: {layout.teachers[n].directory} caches {n!r}, not a teacher of the model "
                f"({', '.join(teachers)}); list the cached teachers in data.cache.teachers"
                for n in layout.teachers if n not in teachers]
    if layout.required:
        problems += [f"data.cache: no cache for teacher {n!r} (every teacher is read from the cache unless "
                     f"data.cache.teachers lists some)" for n in teachers if n not in layout.teachers]
    keys = ("patch_size", "input_size", "feature_dim", "summary_dim", "dynamic_resolution")
    for n, t in layout.teachers.items():
        if n not in teachers:
            continue
        if mosaic.get(n):
            problems.append(mosaic_error(n))
        error = grid_error(t.directory, specs[n], student_grid)
        if error:
            problems.append(error)
        have, want = t.meta.get("teacher", {}), teachers[n].describe()
        diffs = [f"{k}: cache {have.get(k)!r} != teacher {want[k]!r}" for k in keys if have.get(k) != want[k]]
        if diffs:
            problems.append(f"feature cache {t.directory}/meta.json: teacher {n!r} differs: " + "; ".join(diffs))
    if problems:
        raise CacheMismatchError("the feature cache does not fit the model:\n  " + "\n  ".join(problems))
