"""The checks of a recipe that run before anything is built or computed (`check_recipe`), and the one that
needs the built teachers (`teacher_grid_errors`). ("Validate" means Lightning's validation loop only:
`radio validate`.)

Checks: no unknown keys and no value of the wrong type (LightningCLI's parser checks its typed sections; plain
YAML read by other commands is checked here), teacher names are registered and unique, normalizer names are
registered, the student architecture resolves, every training resolution (single `data.resolution` or every
partition of `data.stages`) and every fidelity resolution is a multiple of the student's patch size and within
its max_resolution, stages are well formed (steps, batch sizes, partition teachers that exist),
`data.resolution`/`data.batch_size` and `data.stages` are not mixed, every shard pattern matches files and the
shard set is not empty (each shard starts with a tar header; at least one holds a member), the trainer's
distributed strategy fits its accelerator (FSDP needs GPUs), every value with a range is in it (radio.ranges:
batch sizes, steps, warm-up, depth, heads, patch size, learning rate, weight decay, workers, crop scale,
image-pixel limit, the trainer's step counts and intervals, checkpoint intervals; each error names the field
and the allowed range), and a `data.cache` holds, for every teacher it reads, a cache written for that teacher
(meta.json) with a feature shard per training shard. `teacher_grid_errors` runs once the teachers are built,
before any step: every teacher must reach every student grid it is asked to match. Errors name the field or
path, and are all reported together in one ConfigError.

The sections that are dataclasses (model.student, model.teachers, model.optimizer/loss/adaptor/normalization/
validation/stability, data.stages, data.cache) are checked by radio.schema with their own `check` rules: the
same checks their constructors run.
"""
from __future__ import annotations

import inspect
import os
import tarfile
from collections.abc import Iterable, Mapping
from typing import Any

from radio.ranges import COUNT, OPTIONAL_COUNT, OPTIONAL_NON_NEGATIVE_INT, Range, fields_errors
from radio.schema import ConfigError, schema_errors, unknown_key_errors

__all__ = ["ConfigError", "check_recipe", "teacher_grid_errors"]


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _plain(obj: Any) -> Any:
    """A recipe value as plain data: jsonargparse Namespaces as dicts, without jsonargparse's `__path__`."""
    if not isinstance(obj, Mapping) and hasattr(obj, "as_dict"):
        obj = obj.as_dict()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items() if k != "__path__"}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _named(errors: Iterable[str]) -> set[str]:
    """The fields (dotted paths) that errors name."""
    return {e.split(": ", 1)[0] for e in errors}


def _unless_named(errors: Iterable[str], named: set[str]) -> list[str]:
    """`errors` less those about a field already named (a mistyped value fails one check, not two)."""
    return [e for e in errors if e.split(": ", 1)[0] not in named]


TOP_LEVEL_KEYS = {"seed_everything", "trainer", "model", "data", "ckpt_path", "weights_only", "optimizer",
                  "lr_scheduler", "config", "subcommand"}


def _unknown(where: str, obj: Any, allowed: Iterable[str]) -> list[str]:
    if not isinstance(obj, Mapping):
        return []  # parsed by LightningCLI's typed parser, which rejects unknown keys itself
    return unknown_key_errors(where, set(obj) - {"__path__"}, allowed)


def _params(cls: type) -> set[str]:
    init = cls.__init__  # type: ignore[misc]  # the class's own constructor is meant
    return {n for n in inspect.signature(init).parameters if n != "self"}


def schema_pass(cfg: Any) -> list[str]:
    """Unknown keys of the recipe, the model and the data sections, and radio.schema's problems (unknown keys,
    types, the section's own `check`) of every dataclass section: the student, each teacher, the model's other
    sections and the stages (data.cache: radio.cache.checks)."""
    from radio.data.datamodule import ShardDataModule
    from radio.data.schedule import StageConfig
    from radio.losses import LossConfig
    from radio.model.adaptors import AdaptorConfig
    from radio.model.vit import StudentConfig
    from radio.train.config import (
        NormalizationConfig,
        OptimConfig,
        StabilityConfig,
        TeacherEntry,
        ValidationConfig,
    )
    from radio.train.module import DistillModule

    errors = _unknown("recipe", cfg, TOP_LEVEL_KEYS)
    model, data = _get(cfg, "model"), _get(cfg, "data")
    model_args, data_args = _get(model, "init_args", model), _get(data, "init_args", data)
    if not (isinstance(model, Mapping) and "class_path" in model):
        errors += _unknown("model", model_args, _params(DistillModule))
    if not (isinstance(data, Mapping) and "class_path" in data):
        errors += _unknown("data", data_args, _params(ShardDataModule))
    student = _get(model_args, "student")
    errors += schema_errors(StudentConfig, {} if student is None else _plain(student), "model.student")
    errors += schema_errors(list[TeacherEntry], _plain(_get(model_args, "teachers") or []), "model.teachers")
    for key, cls in (("optimizer", OptimConfig), ("loss", LossConfig), ("adaptor", AdaptorConfig),
                     ("normalization", NormalizationConfig), ("validation", ValidationConfig),
                     ("stability", StabilityConfig)):
        if _get(model_args, key) is not None:
            errors += schema_errors(cls, _plain(_get(model_args, key)), f"model.{key}")
    if _get(data_args, "stages"):
        errors += schema_errors(list[StageConfig], _plain(_get(data_args, "stages")), "data.stages")
    return errors


def strategy_errors(trainer: Any) -> list[str]:
    """The distributed strategy exists and fits the accelerator; devices and nodes are sane."""
    from lightning.pytorch.strategies import StrategyRegistry

    if trainer is None:
        return []
    errors: list[str] = []
    strategy = _get(trainer, "strategy", "auto")
    accelerator = str(_get(trainer, "accelerator", "auto") or "auto")
    if isinstance(strategy, str):
        name = strategy
        if name != "auto" and name not in StrategyRegistry.available_strategies():
            errors.append(f"trainer.strategy: unknown strategy {name!r}; e.g. auto, ddp, fsdp (all: "
                          f"{', '.join(StrategyRegistry.available_strategies())})")
    else:
        name = str(_get(strategy, "class_path", type(strategy).__name__)).rsplit(".", 1)[-1].lower()
    if "fsdp" in name.lower() and accelerator == "cpu":
        errors.append(f"trainer.strategy: {name} (FSDP) needs GPUs: Lightning runs FSDP only with accelerator "
                      "gpu/cuda; use strategy ddp on the CPU")
    nodes = _get(trainer, "num_nodes", 1)
    if nodes is not None and (not isinstance(nodes, int) or nodes < 1):
        errors.append(f"trainer.num_nodes: must be a positive integer, got {nodes!r}")
    devices = _get(trainer, "devices", "auto")
    if isinstance(devices, int) and (devices == 0 or devices < -1):
        errors.append(f"trainer.devices: must be a positive count, -1, a list or 'auto', got {devices}")
    accumulate = _get(trainer, "accumulate_grad_batches", 1)
    if accumulate not in (None, 1):
        errors.append(f"trainer.accumulate_grad_batches: must be 1, got {accumulate!r}; the stage schedule, the "
                      "normalizer estimation and the non-finite guard count optimizer steps as batches: raise the "
                      "partitions' batch_size or trainer.devices instead")
    return errors


TRAINER_RANGES: dict[str, Range] = {
    "max_steps": Range(lo=1, integer=True, also=(-1,)),
    "max_epochs": Range(lo=1, integer=True, optional=True, also=(-1,)),
    "min_steps": OPTIONAL_NON_NEGATIVE_INT, "min_epochs": OPTIONAL_NON_NEGATIVE_INT,
    "check_val_every_n_epoch": OPTIONAL_COUNT, "log_every_n_steps": OPTIONAL_COUNT,
    "num_sanity_val_steps": Range(lo=-1, integer=True, optional=True),
    "gradient_clip_val": Range(lo=0, optional=True),
}
# (integer range, fraction range) of the trainer's fields that take a count or a fraction
TRAINER_COUNT_OR_FRACTION: dict[str, tuple[Range, Range]] = {
    "val_check_interval": (COUNT, Range(lo=0, hi=1, lo_open=True)),
    "limit_train_batches": (Range(lo=1, integer=True), Range(lo=0, hi=1, lo_open=True)),
    "limit_val_batches": (Range(lo=0, integer=True), Range(lo=0, hi=1)),
}
CHECKPOINT_RANGES: dict[str, dict[str, Range]] = {  # checkpoint callbacks by class name
    "RadioCheckpoint": {"every_n_train_steps": COUNT, "keep_last": Range(lo=1, integer=True, also=(-1,))},
    "ModelCheckpoint": {"every_n_train_steps": OPTIONAL_NON_NEGATIVE_INT,
                        "save_top_k": Range(lo=-1, integer=True)},
}


def trainer_errors(trainer: Any) -> list[str]:
    """The trainer's step counts and intervals, and the checkpoint callbacks' intervals, are in their ranges."""
    if trainer is None:
        return []
    errors = fields_errors("trainer", trainer, TRAINER_RANGES)
    for key, (whole, fraction) in TRAINER_COUNT_OR_FRACTION.items():
        v = _get(trainer, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # None (the default), or a time interval (checked by Lightning)
        if not (whole.accepts(v) if isinstance(v, int) else fraction.accepts(v)):
            errors.append(f"trainer.{key}: must be {whole.describe()} (batches) or {fraction.describe()} (a "
                          f"fraction), got {v!r}")
    callbacks = _get(trainer, "callbacks") or []
    for i, cb in enumerate(callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]):
        name = str(_get(cb, "class_path", type(cb).__name__)).rsplit(".", 1)[-1]
        if name in CHECKPOINT_RANGES:
            where = f"trainer.callbacks[{i}]" + (".init_args" if _get(cb, "class_path") else "")
            errors += fields_errors(where, _get(cb, "init_args", cb), CHECKPOINT_RANGES[name])
    return errors


def shard_content_errors(urls: list[str], what: str) -> list[str]:
    """Shards that are empty or do not start with a tar header; all of them being so is an empty shard set.
    One header read per shard (the full scan, with exact fault counts, happens when the data is set up)."""
    bad = []
    for u in urls:
        try:
            if os.path.getsize(u) == 0:
                bad.append(f"{u} (empty file)")
                continue
            with tarfile.open(u, mode="r:") as tf:
                if tf.next() is None:
                    bad.append(f"{u} (a tar without members)")
        except (tarfile.TarError, OSError) as e:
            bad.append(f"{u} (not a tar file: {e})")
    if bad and len(bad) == len(urls):
        return [f"{what}: the shard set is empty: none of its {len(urls)} shard(s) holds a sample: "
                + "; ".join(bad[:5])]
    return []


def teacher_grid_errors(module: Any, datamodule: Any) -> list[str]:
    """Each built teacher must run at the input its grid needs for every partition it supervises and every
    fidelity resolution (e.g. a fixed input size that is not a multiple of its patch size cannot)."""
    schedule = getattr(datamodule, "schedule", None)
    if schedule is None:
        return []
    patch = module.patch_size
    wanted: dict[str, set[int]] = {}
    for st in schedule.stages:
        for p in st.partitions:
            for n in p.teachers or [e.name for e in module.entries]:
                wanted.setdefault(n, set()).add(p.resolution)
    for n in wanted:
        wanted[n] |= set(module.val_cfg.resolutions or [])
    errors = []
    for i, e in enumerate(module.entries):
        t = module.teachers[e.name]
        for r in sorted(wanted.get(e.name, ())):
            grid = (r // patch, r // patch)
            size = t.resolution_for(grid)
            try:
                t.check_resolution(*size)
                region = t.valid_region(*size)
                if region.grid_height < 1 or region.grid_width < 1:
                    raise ValueError(f"its feature grid at {size[0]}x{size[1]} px is {region.grid_height}x"
                                     f"{region.grid_width} (patch size {t.patch_size})")
            except ValueError as err:
                errors.append(f"model.teachers[{i}] ({e.name}): cannot produce targets for the {grid[0]}x{grid[1]} "
                              f"student grid at {r} px: {err}")
    return errors


def check_recipe(cfg: Any) -> None:
    """Check a resolved fit config (jsonargparse Namespace or nested dicts with `model` and `data`); a
    ConfigError lists every problem, one per line."""
    import teachers as teacher_lib
    from radio.cache.checks import recipe_cache_errors
    from radio.cache.config import main_grid
    from radio.data.datamodule import DATA_RANGES
    from radio.data.schedule import resolution_errors, schedule_errors
    from radio.data.shards import resolve_shards
    from radio.normalize import NORMALIZERS

    model, data = _get(cfg, "model"), _get(cfg, "data")
    model_args = _get(model, "init_args", model)
    data_args = _get(data, "init_args", data)

    errors: list[str] = schema_pass(cfg)
    named = _named(errors)  # the checks below skip what the schema already named (e.g. a mistyped value)
    more = strategy_errors(_get(cfg, "trainer"))
    more += trainer_errors(_get(cfg, "trainer"))

    valid = teacher_lib.available()
    entries = _get(model_args, "teachers") or []
    entries = entries if isinstance(entries, (list, tuple)) else []
    if not entries:
        more.append("model.teachers: at least one teacher is needed")
    seen: list[str] = []
    for i, t in enumerate(entries):
        name = _get(t, "name")
        if name not in valid:
            more.append(f"model.teachers[{i}].name: unknown teacher {name!r}; valid: {', '.join(valid)}")
        if name in seen:
            more.append(f"model.teachers[{i}].name: {name!r} appears more than once")
        seen.append(name)
        norm = _get(t, "normalizer", "none")
        if norm not in NORMALIZERS:
            more.append(f"model.teachers[{i}].normalizer: unknown normalizer {norm!r}; valid: "
                        f"{', '.join(NORMALIZERS.names())}")

    student = _get(model_args, "student")
    patch = _get(student, "patch_size", 16)
    max_res = _get(student, "max_resolution", 2048)
    if not (COUNT.accepts(patch) and COUNT.accepts(max_res)) or max_res < patch:  # named above; no grid
        patch, max_res = None, None

    stages = _get(data_args, "stages")
    res, bs = _get(data_args, "resolution"), _get(data_args, "batch_size")
    if stages:
        if res is not None or bs is not None:
            more.append("data.stages: give either data.resolution/data.batch_size (one partition) or "
                        "data.stages, not both")
        if isinstance(stages, (list, tuple)):
            more += schedule_errors(list(stages), patch, max_res, seen)
    elif res is not None:
        more += resolution_errors("data.resolution", res, patch, max_res)
    val_res = _get(data_args, "val_resolution")
    if val_res is not None:
        more += resolution_errors("data.val_resolution", val_res, 0, 0)

    more += fields_errors("data", data_args, DATA_RANGES)

    resolutions = _get(_get(model_args, "validation"), "resolutions") or []
    for j, r in enumerate(resolutions if isinstance(resolutions, (list, tuple)) else []):
        more += resolution_errors(f"model.validation.resolutions[{j}]", r, patch, max_res)

    urls = None
    for key in ("shards", "val_shards"):
        spec = _get(data_args, key)
        if spec is None and key == "val_shards":
            continue
        try:
            found = resolve_shards(spec, f"data.{key}")
            urls = found if key == "shards" else urls
            more += shard_content_errors(found, f"data.{key}")
        except FileNotFoundError as e:
            more.append(str(e))
    if _get(data_args, "cache") is not None:
        try:
            main_grid(data_args, patch)  # the student grid the cache is written for
        except (TypeError, ValueError, IndexError, KeyError):
            more.append("data.cache: not checked: the student grid it is written for needs a valid "
                        "model.student.patch_size and training resolution")
        else:
            more += recipe_cache_errors(list(entries), patch, data_args, urls)

    errors += _unless_named(more, named)
    if errors:
        raise ConfigError("invalid recipe:\n  " + "\n  ".join(errors))
