"""The feature cache on disk: one folder per teacher, its meta.json and its feature shards.

Layout, per teacher: OUT/<teacher>/<name>.tar for every image shard <name>.tar (same file name, same keys in
the same order, so a reader can walk an image shard and its feature shard side by side), members `__key__`,
`features.npy` (C, h, w) and `summary.npy` (C,) when the teacher has one; and OUT/<teacher>/meta.json with the
format version, the teacher's spec (name, model, pretrained, arch, seed, options) and description (patch size,
dims, mean/std), resolution, feature grid, the region of the canvas that holds the image, dtype, counts, the
keys not cached (`skipped_keys`), the storage per image, the image-shard -> feature-shard map and each image
shard's size in bytes (so that a reader can tell another shard of the same name from the one cached).

The writer is radio.cache.writer, the checks of a cache against a recipe radio.cache.checks.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from teachers.base import TeacherOutput

FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
SPEC_FIELDS = ("name", "model", "pretrained", "arch", "input_size", "seed", "options")


class CacheMismatchError(ValueError):
    """A feature cache that does not belong to the recipe's teacher, or a malformed cached sample."""


def encode_array(a: np.ndarray) -> bytes:
    """One record member: the array as .npy bytes (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def decode_cached(raw: dict[str, Any]) -> TeacherOutput:
    """A cached sample (raw tar members) -> TeacherOutput(summary (C,) or None, features (C, h, w)), float32."""
    if "features.npy" not in raw:
        raise CacheMismatchError(f"feature shard {raw.get('__url__')} key {raw.get('__key__')}: no features.npy "
                                 f"member; members: {sorted(k for k in raw if not k.startswith('__'))}")
    feats = torch.from_numpy(np.load(io.BytesIO(raw["features.npy"]), allow_pickle=False).astype(np.float32))
    summ = None
    if "summary.npy" in raw:
        summ = torch.from_numpy(np.load(io.BytesIO(raw["summary.npy"]), allow_pickle=False).astype(np.float32))
    return TeacherOutput(summ, feats)


def read_cache_meta(directory: str | Path) -> dict[str, Any]:
    """The parsed meta.json of a teacher's cache directory; a missing or unreadable file is an error naming it."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        where = "the folder does not exist; " if not Path(directory).exists() else ""
        raise FileNotFoundError(f"feature cache {directory}: no meta.json ({where}write it with `radio cache`)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheMismatchError(f"feature cache {path}: unreadable ({e})") from e


def cached_folders(directory: str) -> list[str]:
    """The teacher folders (with a meta.json) of a cache directory, sorted."""
    return sorted(d for d in os.listdir(directory) if os.path.isfile(os.path.join(directory, d, "meta.json")))


def expected_resolution(teacher: dict[str, Any], student_grid: tuple[int, int]) -> tuple[int, int]:
    """The canvas `cache_teachers` writes for a teacher described by `Teacher.describe()` and a student grid:
    a dynamic teacher at the grid times its patch, a fixed-size one at its input size (`Teacher.resolution_for`)."""
    if teacher.get("dynamic_resolution"):
        p = int(teacher["patch_size"])
        return student_grid[0] * p, student_grid[1] * p
    return int(teacher["input_size"]), int(teacher["input_size"])
