"""Reading the feature cache for training: the cached teachers of a run (`read_layout` -> CacheLayout) and one
sample's cached record (`read_features`).

A cache written for another teacher, architecture, patch size, resolution or format, or a training shard without
its feature shard, is an error naming meta.json or the shard before any compute (radio.cache.checks). A single
sample whose cached record is missing or malformed is bad data: `FeatureError` names the feature shard and the
key, and the sample is skipped and counted like an undecodable image (radio.data.health).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from radio.cache.aligned import GridGeometry
from radio.cache.checks import config_errors, missing_dir_error, shard_errors
from radio.cache.config import CacheConfig, coerce_config
from radio.cache.format import CacheMismatchError, cached_folders, decode_cached, read_cache_meta
from radio.data.shards import Sample
from teachers.base import TeacherOutput


@dataclass(frozen=True)
class CachedTeacher:
    """One cached teacher: its name, folder and grid geometry, as its meta.json records them."""

    name: str
    directory: str
    geometry: GridGeometry
    feature_dim: int
    has_summary: bool
    meta: dict = field(compare=False, repr=False, default_factory=dict)

    def feature_shard(self, image_url: str) -> str:
        return os.path.join(self.directory, os.path.basename(image_url))


@dataclass(frozen=True)
class CacheLayout:
    """The cached teachers of a run, the reference grid of the crops and how summaries are used."""

    teachers: dict[str, CachedTeacher]
    reference: str
    summary: str = "exact"
    whole_view: float = 0.25
    required: bool = False  # True: every teacher of the recipe must be cached (CacheConfig.teachers was None)

    @property
    def ref(self) -> GridGeometry:
        return self.teachers[self.reference].geometry


def _cached_names(cfg: CacheConfig) -> list[str]:
    if cfg.teachers is not None:
        return list(cfg.teachers)
    found = cached_folders(cfg.dir)
    if not found:
        raise FileNotFoundError(f"data.cache.dir: {cfg.dir} holds no teacher cache (a folder with meta.json); "
                                f"write it with `radio cache --config RECIPE --out {cfg.dir}`")
    return found


def _cached_teacher(name: str, directory: str, meta: dict[str, Any]) -> CachedTeacher:
    res, p = meta["resolution"], int(meta["patch_size"])
    geom = GridGeometry(int(res[0]), p, (int(res[0]) // p, int(res[1]) // p))
    return CachedTeacher(name, directory, geom, int(meta["teacher"]["feature_dim"]),
                         bool(meta.get("summary_shape")), meta)


def choose_reference(teachers: dict[str, CachedTeacher], align: str | None) -> str:
    """`align` if given (one of `teachers`: radio.cache.checks.config_errors), else the teacher with the
    coarsest cells (first of equals)."""
    if align is not None:
        return align
    return max(teachers, key=lambda n: teachers[n].geometry.cell)


def read_layout(cfg: Any, image_urls: list[str]) -> CacheLayout:
    """Read the cached teachers' metadata (`cfg.teachers`, or every teacher folder of `cfg.dir`) and check that
    every training image shard has its feature shards."""
    cfg = coerce_config(cfg)
    missing = missing_dir_error(cfg)
    if missing:
        raise FileNotFoundError(missing)
    teachers = {}
    for name in _cached_names(cfg):
        directory = os.path.join(cfg.dir, name)
        teachers[name] = _cached_teacher(name, directory, read_cache_meta(directory))
        problems = shard_errors(directory, teachers[name].meta, image_urls)
        if problems:
            raise FileNotFoundError("; ".join(problems))
    problems = config_errors(cfg, list(teachers))
    if problems:
        raise ValueError("; ".join(problems))
    return CacheLayout(teachers, choose_reference(teachers, cfg.align), cfg.summary, cfg.whole_view,
                       required=cfg.teachers is None)


class FeatureError(CacheMismatchError):
    """One sample's cached record is missing or malformed. Like an undecodable image it is bad data: the sample
    is skipped and counted (radio.data.health), named by `radio_url` (the feature shard) and `radio_key`."""

    def __init__(self, msg: str, shard: str, key: str, kind: str = "FeatureError") -> None:
        super().__init__(msg)
        self.radio_url, self.radio_key, self.radio_kind = shard, key, kind


class MissingFeatures(NamedTuple):
    """A sample key that a feature shard lacks (or lost to a fault of that shard); never filled in."""

    shard: str
    key: str

    def error(self) -> FeatureError:
        return FeatureError(f"feature shard {self.shard} has no key {self.key} (the writer skipped it, or the "
                            "shard is damaged); the sample is skipped", self.shard, self.key, "MissingFeatures")


@dataclass
class CachedSample(Sample):
    """A decoded image sample with its teachers' raw cached records (or MissingFeatures)."""

    cached: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, sample: Sample, records: dict[str, Any]) -> CachedSample:
        return cls(**{f.name: getattr(sample, f.name) for f in dataclasses.fields(Sample)}, cached=records)


def read_features(sample: CachedSample, t: CachedTeacher) -> TeacherOutput:
    """One sample's cached outputs (summary (C_s,) or None, features (C, h, w)), float32. An absent key, an
    undecodable member or a wrong shape raises FeatureError naming the feature shard and the key."""
    raw = sample.cached.get(t.name)
    if raw is None:
        raise CacheMismatchError(f"sample {sample.key} of {sample.url}: no cached record of teacher {t.name!r}")
    if isinstance(raw, MissingFeatures):
        raise raw.error()
    shard, key = str(raw.get("__url__")), str(raw.get("__key__"))
    where = f"feature shard {shard} key {key}"
    try:
        out = decode_cached(raw)
    except (ValueError, OSError, EOFError) as e:  # CacheMismatchError is a ValueError
        raise FeatureError(f"{where}: cannot decode the cached arrays ({e})", shard, key) from e
    want = (t.feature_dim, *t.geometry.grid)
    if tuple(out.features.shape) != want:
        raise FeatureError(f"{where}: features of shape {tuple(out.features.shape)}, meta.json says {want}",
                           shard, key)
    if t.has_summary and out.summary is None:
        raise FeatureError(f"{where}: no summary.npy member, but teacher {t.name!r} has a summary", shard, key)
    return out
