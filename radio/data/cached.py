"""Training from the feature cache (`radio cache`) with augmentation kept alive.

Recipe: `data.cache: {dir: DIR, teachers: [...], align: NAME, summary: exact, whole_view: 0.25}` (CacheConfig).
DIR holds one folder per teacher as `radio cache` writes it (meta.json + one feature shard per image shard,
same file name, same keys in the same order). The listed teachers (default: every teacher of the recipe) are
read from the cache in every partition they supervise; the others run online in the same step (mixed runs).

The canvas, per teacher family: the centre square of the image at the teacher's cache resolution
(`eval_transform(R)`): a dynamic teacher (DINOv2) at a fixed R = the recipe's main student grid x its patch; a
fixed-size teacher (CLIP, SigLIP) at its input size (SigLIP-SO400M-14-384: 27 x 27 cells of 14 px on 384 px);
SAM at its padded canvas, which the square image fills (its valid region is the whole canvas). All canvases are
the same centre square of the image, each at its own resolution (to within torchvision's rounding of one pixel).

The aligned crop (radio.data.aligned): per sample, one random resized crop is drawn in whole cells of a
*reference* grid (`align`, default the teacher with the coarsest cells, so that grids that nest in it are cut on
their cell borders too) with torchvision's sampling (area fraction ~ U(min_crop_scale, 1), aspect 3/4..4/3),
plus a flip with probability 1/2. The student's image is that box of the reference canvas (drawn at
ceil(resolution / R) times its size, so a high-resolution partition is not upsampled from a small canvas),
resized to the partition's resolution, flipped. Each cached grid gives the same box, flipped: its whole cells
where the box falls on its cell borders (exact; always for the reference), otherwise bilinear samples at the
centres of round(extent) cells spanning the box. In the module (radio.train.targets.cached_targets) each crop is
resized to the grid the teacher would have given online for the student image (dynamic: the student grid; fixed
size: its own grid) and then goes through the normal normalizer, grid matching and losses.

The online reference of "the same loss from the cache as online": the teacher run on the same canvas, its
output cut with the same box and flipped (tests/data/test_cached.py shows the module's loss from the cache
equals it to float16 tolerance). It is not the teacher run on the cropped image (a ViT's features of a crop
are not the crop of its features: attention sees the whole canvas); for a teacher whose features are local
(a strided convolution) both agree exactly, which shows the crop is aligned.

Summary targets: a cached summary describes the whole canvas. `summary: exact` (default) uses it only for
samples whose view is the whole canvas, unflipped; `whole_view` is the probability of drawing that view (so a
quarter of the samples train the summary heads by default); the other samples carry no summary target (the loss
is the mean over the samples that do). `summary: approximate` uses the canvas summary for every crop and flip.

Nothing is filled in. A cache written for another teacher, architecture, patch size, resolution or format, or a
training shard without its feature shard, or a key that an intact feature shard lacks although the writer did not
skip it (meta.json `skipped_keys`), is an error naming meta.json, the shard or the key, before any compute. A
single sample whose cached record the writer skipped (its image did not decode), was lost to damage of its feature
shard, or is malformed (an array of the wrong shape, an undecodable member) is bad data: `FeatureError` names the
feature shard and the key, and the sample is skipped and counted like an undecodable image (radio.data.health).
Records are read by random access beside their images (radio.data.feature_index). Validation still runs the
teachers online.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from radio.data.aligned import CropView, GridGeometry, canvas_image, crop_grid, crop_image, draw_view
from radio.data.shards import Sample
from teachers.base import TeacherOutput
from teachers.cache import CacheMismatchError, check_cache_for_grid, decode_cached, read_cache_meta

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
    teachers: Optional[list[str]] = None
    align: Optional[str] = None
    summary: str = "exact"
    whole_view: float = 0.25


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


def coerce_config(cfg: Any) -> CacheConfig:
    if isinstance(cfg, CacheConfig):
        return cfg
    if hasattr(cfg, "as_dict"):  # jsonargparse Namespace
        cfg = cfg.as_dict()
    if not isinstance(cfg, dict):
        raise TypeError(f"data.cache: expected a mapping, got {type(cfg).__name__}")
    known = {f.name for f in dataclasses.fields(CacheConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"data.cache: unknown key(s) {unknown}; allowed: {sorted(known)}")
    if not cfg.get("dir"):
        raise ValueError("data.cache.dir: required (the directory `radio cache --out DIR` wrote)")
    return CacheConfig(**cfg)


def cached_folders(directory: str) -> list[str]:
    """The teacher folders (with a meta.json) of a cache directory, sorted."""
    return sorted(d for d in os.listdir(directory) if os.path.isfile(os.path.join(directory, d, "meta.json")))


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


def choose_reference(teachers: dict[str, CachedTeacher], align: Optional[str]) -> str:
    """`align` if given, else the teacher with the coarsest cells (first of equals)."""
    if align is not None:
        if align not in teachers:
            raise ValueError(f"data.cache.align: {align!r} is not a cached teacher ({', '.join(teachers)})")
        return align
    return max(teachers, key=lambda n: teachers[n].geometry.cell)


def read_layout(cfg: Any, image_urls: list[str]) -> CacheLayout:
    """Read the cached teachers' metadata (`cfg.teachers`, or every teacher folder of `cfg.dir`) and check that
    every training image shard has its feature shards."""
    cfg = coerce_config(cfg)
    if not os.path.isdir(cfg.dir):
        raise FileNotFoundError(f"data.cache.dir: {cfg.dir!r} does not exist (write it with `radio cache "
                                f"--config RECIPE --out {cfg.dir}`)")
    teachers = {}
    for name in _cached_names(cfg):
        directory = os.path.join(cfg.dir, name)
        teachers[name] = _cached_teacher(name, directory, read_cache_meta(directory))
        problems = shard_errors(directory, teachers[name].meta, image_urls)
        if problems:
            raise FileNotFoundError("; ".join(problems))
    if cfg.summary not in SUMMARY_MODES:
        raise ValueError(f"data.cache.summary: must be one of {SUMMARY_MODES}, got {cfg.summary!r}")
    if not 0.0 <= cfg.whole_view <= 1.0:
        raise ValueError(f"data.cache.whole_view: must be in [0, 1], got {cfg.whole_view}")
    return CacheLayout(teachers, choose_reference(teachers, cfg.align), cfg.summary, cfg.whole_view,
                       required=cfg.teachers is None)


def cache_errors(cfg: Any, specs: dict[str, Any], mosaic: dict[str, bool], student_grid: tuple[int, int],
                 image_urls: Optional[list[str]]) -> list[str]:
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
    except (TypeError, ValueError) as e:
        return [str(e)]
    errors = []
    unknown = [n for n in (cfg.teachers or []) if n not in specs]
    if unknown:
        errors.append(f"data.cache.teachers: {unknown} not teachers of this recipe ({', '.join(specs)})")
    names = [n for n in (cfg.teachers if cfg.teachers is not None else specs) if n in specs]
    if cfg.align is not None and cfg.align not in names:
        errors.append(f"data.cache.align: {cfg.align!r} is not a cached teacher ({', '.join(names)})")
    if cfg.summary not in SUMMARY_MODES:
        errors.append(f"data.cache.summary: must be one of {SUMMARY_MODES}, got {cfg.summary!r}")
    if not 0.0 <= cfg.whole_view <= 1.0:
        errors.append(f"data.cache.whole_view: must be in [0, 1], got {cfg.whole_view}")
    if not cfg.dir or not os.path.isdir(cfg.dir):
        return errors + [f"data.cache.dir: {cfg.dir!r} does not exist (write it with `radio cache --config RECIPE "
                         f"--out {cfg.dir or 'DIR'}`)"]
    if cfg.teachers is None:
        extra = [n for n in cached_folders(cfg.dir) if n not in specs]
        if extra:
            errors.append(f"data.cache.dir: {cfg.dir} also caches {extra}, not teachers of this recipe; list the "
                          f"cached teachers in data.cache.teachers")
    for name in names:
        directory = os.path.join(cfg.dir, name)
        if mosaic.get(name):
            errors.append(f"model.teachers ({name}): mosaic and data.cache exclude each other (a cached teacher "
                          "is read, not run); set mosaic: false or leave it out of data.cache.teachers")
        try:
            check_cache_for_grid(directory, specs[name], student_grid)
        except (CacheMismatchError, FileNotFoundError) as e:
            errors.append(str(e))
            continue
        errors += shard_errors(directory, read_cache_meta(directory), image_urls or [])
    return errors


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


def main_resolution(data: Any) -> int:
    """The recipe's main training resolution (final stage, first partition; else data.resolution or 224), as
    the datamodule computes it: the student grid the cache is written for."""
    def get(o: Any, k: str) -> Any:
        return o.get(k) if isinstance(o, dict) else getattr(o, k, None)

    stages = get(data, "stages")
    if stages:
        return int(get(get(stages[-1], "partitions")[0], "resolution"))
    return int(get(data, "resolution") or 224)


# -- reading --------------------------------------------------------------------------------------------------
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
    def of(cls, sample: Sample, records: dict[str, Any]) -> "CachedSample":
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


# -- batches --------------------------------------------------------------------------------------------------
class CachedTargets(NamedTuple):
    """A partition's cached targets of one teacher.

    summary: (B, C_s) the canvas summaries, or None (teacher without one); features: B crops (C, h_i, w_i), sizes
    varying with each sample's box; summary_valid: (B,) bool, the samples whose summary target holds.
    """

    summary: Optional[Tensor]
    features: list[Tensor]
    summary_valid: Tensor


class CachedItem(NamedTuple):
    """One sample's aligned view: image (3, r, r), the view, per cached teacher its feature crop (C, h', w') and
    its canvas summary (C_s,) or None."""

    image: Tensor
    view: CropView
    features: dict[str, Tensor]
    summaries: dict[str, Optional[Tensor]]


class CachedViews:
    """The PartitionBatcher's hook: one aligned view per sample, applied to its image and its cached grids."""

    def __init__(self, layout: CacheLayout, min_scale: float) -> None:
        self.layout = layout
        self.min_scale = min_scale

    def names(self, partition_teachers: Optional[list[str]]) -> list[str]:
        """The cached teachers that supervise a partition (its `teachers`, None meaning all)."""
        return [n for n in self.layout.teachers if partition_teachers is None or n in partition_teachers]

    def sample(self, s: CachedSample, resolution: int, names: list[str],
               generator: Optional[torch.Generator] = None) -> CachedItem:
        """One sample's aligned view, its image at `resolution` and its cached teachers' crops. Raises
        FeatureError for a missing or malformed cached record (the caller skips the sample)."""
        from torchvision.transforms.v2.functional import to_image

        ref = self.layout.ref
        view = draw_view(ref, self.min_scale, self.layout.whole_view, generator=generator)
        outs = {n: read_features(s, self.layout.teachers[n]) for n in names}
        scale = max(1, math.ceil(resolution / ref.resolution))
        image = crop_image(canvas_image(to_image(s.image), ref.resolution, scale), view, ref, resolution)
        feats = {n: crop_grid(o.features, view, ref, self.layout.teachers[n].geometry) for n, o in outs.items()}
        return CachedItem(image, view, feats, {n: o.summary for n, o in outs.items()})

    def stack(self, items: list[CachedItem], names: list[str], resolution: int) -> dict[str, Any]:
        """{"image" (B, 3, r, r), "cached": name -> CachedTargets, "crop" (B, 6) int: top, left, height, width
        (reference cells), flip, whole} of one partition's items (B may be 0)."""
        views = [it.view for it in items]
        if self.layout.summary == "exact":
            valid = torch.tensor([v.whole and not v.flip for v in views], dtype=torch.bool)
        else:
            valid = torch.ones(len(views), dtype=torch.bool)
        cached = {}
        for n in names:
            summ = [it.summaries[n] for it in items]
            has = self.layout.teachers[n].has_summary and len(items) > 0
            cached[n] = CachedTargets(torch.stack(summ) if has else None, [it.features[n] for it in items], valid)
        crop = torch.tensor([[v.top, v.left, v.height, v.width, int(v.flip), int(v.whole)] for v in views],
                            dtype=torch.long).reshape(-1, 6)
        image = (torch.stack([it.image for it in items]) if items
                 else torch.zeros(0, 3, resolution, resolution))
        return {"image": image, "cached": cached, "crop": crop}


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
            problems.append(f"model.teachers ({n}): mosaic and data.cache exclude each other")
        try:
            check_cache_for_grid(t.directory, specs[n], student_grid)
        except (CacheMismatchError, FileNotFoundError) as e:
            problems.append(str(e))
        have, want = t.meta.get("teacher", {}), teachers[n].describe()
        diffs = [f"{k}: cache {have.get(k)!r} != teacher {want[k]!r}" for k in keys if have.get(k) != want[k]]
        if diffs:
            problems.append(f"feature cache {t.directory}/meta.json: teacher {n!r} differs: " + "; ".join(diffs))
    if problems:
        raise CacheMismatchError("the feature cache does not fit the model:\n  " + "\n  ".join(problems))

