"""Feature cache writer: run each teacher once over image shards and store its outputs as shards.

Layout, per teacher: OUT/<teacher>/<name>.tar for every image shard <name>.tar (same file name, same keys in
the same order, so a reader can walk an image shard and its feature shard side by side), members `__key__`,
`features.npy` (C, h, w) and `summary.npy` (C,) when the teacher has one; and OUT/<teacher>/meta.json with the
format version, the teacher's spec (name, model, pretrained, arch, seed, options) and description (patch size,
dims, mean/std), resolution, feature grid, the region of the canvas that holds the image, dtype, counts, the
storage per image and the image-shard -> feature-shard map.

float16 (the default) halves the storage; a value outside float16's range is an error naming shard and key,
never an inf in the cache. `check_cache_meta` is what a reader calls to refuse a cache written for another
teacher or resolution.
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

from radio.data.shards import ErrorCounter, decode_sample, iter_raw_samples, resolve_shards
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
                  device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Cache one teacher's outputs on the centre crop at `resolution` (H, W) of every sample.

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
    for url in urls:
        dst = out / names[url]
        shard_map[url] = str(dst)
        keys: list[str] = []
        batch: list[torch.Tensor] = []
        with wds.TarWriter(str(dst)) as writer:
            for raw in iter_raw_samples([url], handler=errors):
                try:
                    s = decode_sample(raw)
                except Exception as e:
                    errors(e)
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
        "bytes_per_image": total_bytes / max(1, n), "bytes_total": total_bytes,
        "source_shards": urls, "shards": shard_map,
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
