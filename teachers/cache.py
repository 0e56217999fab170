"""Feature cache writer: run each teacher once over image shards and store its outputs as shards.

Layout: OUT/<teacher>/000000.tar ... with members `__key__` (the image sample's key), `summary.npy` (C,) when
the teacher has one, `features.npy` (C, h, w); and OUT/<teacher>/meta.json recording teacher, architecture,
resolution, patch size, dtype and the storage per image.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from radio.data.shards import ErrorCounter, ShardSink, decode_sample, iter_raw_samples, resolve_shards
from radio.data.transforms import eval_transform
from teachers.base import Teacher, TeacherSpec
from teachers.registry import build

DTYPES = {"float16": np.float16, "float32": np.float32}


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@torch.no_grad()
def cache_teacher(teacher: Teacher, shards: str, out: Union[str, Path], resolution: tuple[int, int],
                  batch_size: int = 32, dtype: str = "float16", shard_size: int = 1000, progress: bool = True,
                  device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Cache one teacher's outputs on the centre crop at `resolution` (H, W) of every sample."""
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    np_dtype = DTYPES[dtype]
    urls = resolve_shards(shards, "cache shards")
    out = Path(out)
    teacher = teacher.to(device)
    tf = eval_transform(resolution[0]) if resolution[0] == resolution[1] else None
    if tf is None:
        raise ValueError(f"cache: non-square resolution {resolution} is not supported")
    errors = ErrorCounter()
    total_bytes, n = 0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"cache {teacher.name}", unit="img", leave=False)
    keys: list[str] = []
    batch: list[torch.Tensor] = []
    with ShardSink(out, shard_size=shard_size) as sink:
        def flush() -> None:
            nonlocal total_bytes, n
            if not batch:
                return
            res = teacher(torch.stack(batch).to(device))
            feats = res.features.cpu().numpy().astype(np_dtype)
            summ = res.summary.cpu().numpy().astype(np_dtype) if res.summary is not None else None
            for i, key in enumerate(keys):
                sample = {"__key__": key, "features.npy": _npy(feats[i])}
                if summ is not None:
                    sample["summary.npy"] = _npy(summ[i])
                total_bytes += feats[i].nbytes + (summ[i].nbytes if summ is not None else 0)
                sink.write(sample)
            n += len(keys)
            if bar is not None:
                bar.update(len(keys))
            keys.clear()
            batch.clear()

        for raw in iter_raw_samples(urls, handler=errors):
            try:
                s = decode_sample(raw)
            except Exception as e:
                errors(e)
                continue
            keys.append(s.key)
            batch.append(tf(s.image))
            if len(batch) == batch_size:
                flush()
        flush()
    if bar is not None:
        bar.close()
    meta = {"teacher": teacher.describe(), "spec": getattr(teacher, "spec", None).__dict__
            if getattr(teacher, "spec", None) is not None else None,
            "resolution": list(resolution), "dtype": dtype, "count": n, "skipped": errors.total,
            "bytes_per_image": total_bytes / max(1, n), "source_shards": urls, "shards": sink.paths}
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
