"""Entry points of `radio eval`: run a probe on one or more models and write the report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from eval.features import Encoder, describe, extract, load_encoder
from eval.knn import knn_eval
from eval.report import write_report


def split_shards(data: str) -> tuple[str, str]:
    """A data directory with train/ and val/ sub-folders (as `radio data synth` writes) -> two shard specs."""
    p = Path(data)
    train, val = p / "train", p / "val"
    if not (train.is_dir() and val.is_dir()):
        raise FileNotFoundError(f"--data {data!r}: expected sub-directories 'train' and 'val' holding shards")
    return str(train), str(val)


def label_fields_of(data: str, default: Sequence[str] = ("label",)) -> tuple[str, ...]:
    info = Path(data) / "info.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        extra = [f"{k}_label" for k in meta.get("label_fields", {}) if k not in ("count", "shape")]
        return tuple(dict.fromkeys([*default, *extra]))
    return tuple(default)


def knn_probe(encoder: Encoder, train: str, val: str, resolution: int, label_fields: Sequence[str],
              k: int = 20, temperature: float = 0.07, batch_size: int = 64, progress: bool = True,
              device: str = "cpu") -> dict[str, Any]:
    tr = extract(encoder, train, resolution, batch_size, tuple(label_fields), progress=progress, device=device)
    te = extract(encoder, val, resolution, batch_size, tuple(label_fields), progress=progress, device=device)
    out = {}
    for f in label_fields:
        if (tr.labels[f] >= 0).any() and (te.labels[f] >= 0).any():
            out[f] = knn_eval(tr.summary, tr.labels[f], te.summary, te.labels[f], k=k, temperature=temperature)
    out["_skipped_samples"] = tr.errors + te.errors
    return out


def run_knn(models: Sequence[Union[str, dict]], data: str, out: str | Path, resolution: int = 224,
            label_fields: Optional[Sequence[str]] = None, k: int = 20, temperature: float = 0.07,
            batch_size: int = 64, names: Optional[Sequence[str]] = None, progress: bool = True,
            device: str = "cpu") -> dict[str, Any]:
    """kNN probe of every model on `data` (train/ and val/ shards); writes report.json + report.md in `out`."""
    train, val = split_shards(data)
    fields = tuple(label_fields or label_fields_of(data))
    report: dict[str, Any] = {"title": "radio eval: kNN", "models": {}, "probes": {"knn": {}},
                              "data": {"train": train, "val": val, "resolution": resolution}}
    for i, spec in enumerate(models):
        enc = load_encoder(spec, names[i] if names else None)
        res = knn_probe(enc, train, val, resolution, fields, k, temperature, batch_size, progress, device)
        skipped = res.pop("_skipped_samples")
        report["models"][enc.name] = describe(enc) | {"skipped_samples": skipped}
        report["probes"]["knn"][enc.name] = res
    write_report(out, report)
    return report
