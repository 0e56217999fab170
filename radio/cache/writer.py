"""The feature cache writer: run each teacher once over image shards and store its outputs as feature shards
(the layout of radio.cache.format).

float16 (the default) halves the storage; a value outside float16's range is an error naming shard and key,
never an inf in the cache. `cache_recipe` is the `radio cache` command: a recipe's teachers at the resolution
that its main student grid needs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radio.cache.config import main_grid, teacher_specs
from radio.cache.format import DTYPES, FORMAT_VERSION, encode_array
from radio.data.shards import MAX_IMAGE_PIXELS, ErrorCounter, decode_sample, iter_raw_samples, resolve_shards
from radio.data.transforms import eval_transform
from teachers.base import Teacher, TeacherSpec
from teachers.registry import build


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
def cache_teacher(teacher: Teacher, shards: str, out: str | Path, resolution: tuple[int, int],
                  batch_size: int = 32, dtype: str = "float16", progress: bool = True,
                  device: str | torch.device = "cpu",
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
    shapes: dict[str, list[int] | None] = {}

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
            sample = {"__key__": key, "features.npy": encode_array(feats[i])}
            if summ is not None:
                sample["summary.npy"] = encode_array(summ[i])
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
        "grid": shapes.get("features", [None, None, None])[1:],  # type: ignore[index]  # never None
        "region": region._asdict(),
        "features_shape": shapes.get("features"), "summary_shape": shapes.get("summary"),
        "dtype": dtype, "count": n, "skipped": errors.total, "skipped_examples": errors.examples,
        "skipped_keys": skipped_keys,
        "bytes_per_image": total_bytes / max(1, n), "bytes_total": total_bytes,
        "source_shards": urls, "shards": shard_map,
        "source_bytes": {names[u]: os.path.getsize(u) for u in urls if os.path.isfile(u)},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return meta


def cache_teachers(specs: Sequence[TeacherSpec | dict], shards: str, out: str | Path,
                   student_grid: tuple[int, int], **kw: Any) -> dict[str, dict[str, Any]]:
    """Cache every teacher at the resolution that matches the student's patch grid (its fixed size otherwise)."""
    results = {}
    for spec in specs:
        t = build(spec)
        results[t.name] = cache_teacher(t, shards, Path(out) / t.name, t.resolution_for(student_grid), **kw)
    return results


def cache_recipe(config: str, out: str | None = None, shards: str | None = None,
                 teachers: list[str] | None = None, **kw: Any) -> tuple[str, dict[str, dict[str, Any]]]:
    """`radio cache`: the teachers of the recipe file `config` (`teachers`, else its data.cache.teachers, else
    all) cached over its training shards (or `shards`) into `out` (else its data.cache.dir), for its main student
    grid. The recipe is checked first (without its data.cache, which this writes); `kw` go to `cache_teacher`.

    Returns (out, name -> the metadata written). A recipe that cannot run raises ConfigError.
    """
    import yaml

    from radio.train.recipe_checks import ConfigError, check_recipe

    with open(config) as f:
        cfg = yaml.safe_load(f)
    data, model = cfg.setdefault("data", {}), cfg.get("model") or {}
    if shards:  # before validation: the recipe's own data.shards need not exist here
        data["shards"] = shards
    cache = data.pop("cache", None) or {}  # the cache this command writes is not there yet
    out = out or cache.get("dir")
    if not out:
        raise ConfigError(f"{config}: give --out DIR (or data.cache.dir in the recipe)")
    check_recipe(cfg)
    names = teachers or cache.get("teachers")
    specs = teacher_specs(model["teachers"])
    unknown = sorted(set(names or []) - set(specs))
    if unknown:
        raise ConfigError(f"cache --teachers: {unknown} not teachers of {config} ({', '.join(specs)})")
    patch = int((model.get("student") or {}).get("patch_size", 16))
    if data.get("max_image_pixels") is not None:
        kw["max_image_pixels"] = data["max_image_pixels"]
    chosen = [spec for name, spec in specs.items() if not names or name in names]
    return out, cache_teachers(chosen, data["shards"], out, main_grid(data, patch), **kw)
