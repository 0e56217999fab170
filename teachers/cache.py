"""Feature cache writer: run each teacher once over image shards and store its outputs as shards.

Layout, per teacher: OUT/<teacher>/<name>.tar for every image shard <name>.tar (same file name, same keys in
the same order, so a reader can walk an image shard and its feature shard side by side), members `__key__`,
`features.npy` (C, h, w) and `summary.npy` (C,) when the teacher has one; and OUT/<teacher>/meta.json with the
format version, the teacher's spec (name, model, pretrained, arch, seed, options) and description (patch size,
dims, mean/std), resolution, feature grid, the region of the canvas that holds the image, dtype, counts, the
storage per image, the image-shard -> feature-shard map and each image shard's size in bytes (so that a reader
can tell another shard of the same name from the one cached).

float16 (the default) halves the storage; a value outside float16's range is an error naming shard and key,
never an inf in the cache. `check_cache_meta` is what a reader calls to refuse a cache written for another
teacher or resolution; `check_cache_for_grid` adds the resolution `cache_teachers` would write for a student
grid and the consistency of the recorded shapes; `decode_cached` reads one cached sample. The training-side
reader (augmentation, batches) is radio.data.cached.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from radio.data.shards import MAX_IMAGE_PIXELS, ErrorCounter, decode_sample, iter_raw_samples, resolve_shards
from radio.data.transforms import eval_transform
from teachers.base import Teacher, TeacherOutput, TeacherSpec
from teachers.registry import as_spec, build

FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
SPEC_FIELDS = ("name", "model", "pretrained", "arch", "input_size", "seed", "options")


class CacheMismatchError(ValueError):
    """A feature cache that does not belong to the recipe's teacher, or a malformed cached sample."""


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _feature_shard_names(urls: list[str]) -> dict[str, str]:
    names = {u: os.path.basename(u) for u in urls}
    seen: dict[str, str] = {}
    for u, n in names.items():
        if n in seen:
            raise ValueError(f"cache: image shards {seen[n]!r} and {u!r} share the file name {n!r}; cache them "
                             f"into separate directories")
        seen[n] = u
    return names


def _to_numpy(x: torch.Tensor, np_dtype, teacher: str, what: str, url: str, keys: list[str]) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow is detected below and reported with shard and key
        a = x.cpu().numpy().astype(np_dtype)
    if not np.isfinite(a).all():
        bad = [k for k, row in zip(keys, a, strict=True) if not np.isfinite(row).all()]
        peak = float(x.abs().max())
        raise ValueError(f"cache {teacher}: {what} of shard {url} key(s) {bad[:5]} are not finite in "
                         f"{a.dtype} (max |x| = {peak:.4g}); write the cache with --dtype float32")
    return a


@torch.no_grad()
def cache_teacher(teacher: Teacher, shards: str, out: Union[str, Path], resolution: tuple[int, int],
                  batch_size: int = 32, dtype: str = "float16", progress: bool = True,
                  device: Union[str, torch.device] = "cpu",
                  max_image_pixels: int = MAX_IMAGE_PIXELS) -> dict[str, Any]:
    """Cache one teacher's outputs on the centre crop at `resolution` (H, W) of every sample. Samples that do not
    decode, or whose image has more than `max_image_pixels` pixels (never decoded), are skipped and listed.

    Returns the metadata written to OUT/meta.json.
    """
    import webdataset as wds

    if dtype not in DTYPES:
        raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if resolution[0] != resolution[1]:
        raise ValueError(f"cache: non-square resolution {resolution} is not supported")
    np_dtype = DTYPES[dtype]
    urls = resolve_shards(shards, "cache shards")
    names = _feature_shard_names(urls)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = teacher.to(device)
    tf = eval_transform(resolution[0])
    errors = ErrorCounter()
    total_bytes, n = 0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"cache {teacher.name}", unit="img", leave=False)
    shapes: dict[str, Optional[list[int]]] = {}

    def flush(writer, url: str, keys: list[str], batch: list[torch.Tensor]) -> None:
        nonlocal total_bytes, n
        if not batch:
            return
        res = teacher(torch.stack(batch).to(device))
        feats = _to_numpy(res.features, np_dtype, teacher.name, "features", url, keys)
        summ = (_to_numpy(res.summary, np_dtype, teacher.name, "summary", url, keys)
                if res.summary is not None else None)
        shapes["features"] = list(feats.shape[1:])
        shapes["summary"] = list(summ.shape[1:]) if summ is not None else None
        for i, key in enumerate(keys):
            sample = {"__key__": key, "features.npy": _npy(feats[i])}
            if summ is not None:
                sample["summary.npy"] = _npy(summ[i])
            total_bytes += feats[i].nbytes + (summ[i].nbytes if summ is not None else 0)
            writer.write(sample)
        n += len(keys)
        if bar is not None:
            bar.update(len(keys))
        keys.clear()
        batch.clear()

    shard_map = {}
    skipped_keys: dict[str, list[str]] = {}  # feature shard name -> keys of its image shard that were not cached
    for url in urls:
        dst = out / names[url]
        shard_map[url] = str(dst)
        keys: list[str] = []
        batch: list[torch.Tensor] = []
        with wds.TarWriter(str(dst)) as writer:
            for raw in iter_raw_samples([url], handler=errors):
                try:
                    s = decode_sample(raw, max_pixels=max_image_pixels)
                except Exception as e:
                    errors(e)
                    skipped_keys.setdefault(names[url], []).append(str(raw.get("__key__")))
                    continue
                keys.append(s.key)
                batch.append(tf(s.image))
                if len(batch) == batch_size:
                    flush(writer, url, keys, batch)
            flush(writer, url, keys, batch)
    if bar is not None:
        bar.close()
    spec = getattr(teacher, "spec", None)
    region = teacher.valid_region(*resolution)
    meta = {
        "format_version": FORMAT_VERSION,
        "teacher": teacher.describe(),
        "spec": dataclasses.asdict(spec) if spec is not None else None,
        "resolution": list(resolution), "patch_size": teacher.patch_size,
        "grid": shapes.get("features", [None, None, None])[1:], "region": region._asdict(),
        "features_shape": shapes.get("features"), "summary_shape": shapes.get("summary"),
        "dtype": dtype, "count": n, "skipped": errors.total, "skipped_examples": errors.examples,
        "skipped_keys": skipped_keys,
        "bytes_per_image": total_bytes / max(1, n), "bytes_total": total_bytes,
        "source_shards": urls, "shards": shard_map,
        "source_bytes": {names[u]: os.path.getsize(u) for u in urls if os.path.isfile(u)},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return meta


def cache_teachers(specs: Sequence[Union[TeacherSpec, dict]], shards: str, out: Union[str, Path],
                   student_grid: tuple[int, int], **kw: Any) -> dict[str, dict[str, Any]]:
    """Cache every teacher at the resolution that matches the student's patch grid (its fixed size otherwise)."""
    results = {}
    for spec in specs:
        t = build(spec)
        results[t.name] = cache_teacher(t, shards, Path(out) / t.name, t.resolution_for(student_grid), **kw)
    return results


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def check_cache_meta(directory: Union[str, Path], spec: Union[TeacherSpec, dict, str],
                     resolution: tuple[int, int]) -> dict[str, Any]:
    """The metadata of the cache in `directory` if it was written for `spec` at `resolution`, else an error.

    Compared: every TeacherSpec field (name, model, pretrained, arch, input_size, seed, options), the
    resolution and the format version. The error names meta.json and each differing field with both values.
    """
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"feature cache {directory}: no meta.json (write it with `radio cache`)")
    meta = json.loads(path.read_text())
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


def expected_resolution(teacher: dict[str, Any], student_grid: tuple[int, int]) -> tuple[int, int]:
    """The canvas `cache_teachers` writes for a teacher described by `Teacher.describe()` and a student grid:
    a dynamic teacher at the grid times its patch, a fixed-size one at its input size (`Teacher.resolution_for`)."""
    if teacher.get("dynamic_resolution"):
        p = int(teacher["patch_size"])
        return student_grid[0] * p, student_grid[1] * p
    return int(teacher["input_size"]), int(teacher["input_size"])


def read_cache_meta(directory: Union[str, Path]) -> dict[str, Any]:
    """The parsed meta.json of a teacher's cache directory; a missing or unreadable file is an error naming it."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        where = "does not exist" if not Path(directory).exists() else "has no meta.json"
        raise FileNotFoundError(f"feature cache {directory} {where} (write it with `radio cache`)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CacheMismatchError(f"feature cache {path}: unreadable ({e})") from e


def check_cache_for_grid(directory: Union[str, Path], spec: Union[TeacherSpec, dict, str],
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
