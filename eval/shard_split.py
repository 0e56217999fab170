"""Labelled webdataset shards as an evaluation dataset (`radio data synth` / `radio data pack` output).

DIR/train/*.tar, DIR/val/*.tar (+ DIR/info.json): labels from each sample's json, masks from `seg.png`.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from eval.splits import IGNORE, DatasetError, Record, SegInfo, Split, check_mask


def read_info(root: Path, split: str | None = None) -> dict[str, Any]:
    """`info.json` of a shard dataset (DIR/info.json or DIR/<split>/info.json), {} when absent."""
    for f in ([Path(root) / split / "info.json"] if split else []) + [Path(root) / "info.json"]:
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise DatasetError(f"{f}: not valid JSON ({e})") from e
    return {}


def shard_label_classes(info: dict[str, Any]) -> dict[str, list[str]]:
    """Label field -> class names: `label` (info's `classes`) and `<name>_label` for info's `label_fields`.

    Fields whose values are not class indices (synth `count`, 1..3) are left out; `shape_label` duplicates
    synth's `label` and is left out too.
    """
    classes: dict[str, list[str]] = {"label": [str(c) for c in info.get("classes", [])]}
    for k, names in info.get("label_fields", {}).items():
        if k not in ("count", "shape"):
            classes[f"{k}_label"] = [str(c) for c in names]
    return classes


class ShardSplit(Split):
    """Webdataset shards. Corrupt samples are skipped and counted (`skipped`); bad labels and masks raise."""

    layout = "shards"

    def __init__(self, shards: str, name: str, info: dict[str, Any], label_fields: tuple[str, ...] | None = None):
        from radio.data.shards import resolve_shards

        try:
            self.urls = resolve_shards(shards, f"{name} split")
        except FileNotFoundError as e:
            raise DatasetError(f"{shards}: empty split ({e})") from e
        classes = shard_label_classes(info)
        if label_fields:
            classes = {f: classes.get(f, []) for f in label_fields}
        seg = None
        if info.get("seg_classes"):
            seg = SegInfo([str(c) for c in info["seg_classes"]])
        self.seg_ignore = info.get("seg_ignore_index")
        self.skipped = 0
        root = Path(shards.split("::")[0])
        super().__init__(root if root.is_dir() else root.parent, name, classes, seg)

    def records(self, masks: bool = False) -> Iterator[Record]:
        from radio.data.shards import ErrorCounter, SampleError, decode_sample, iter_raw_samples

        errors = ErrorCounter()
        count = 0
        for raw in iter_raw_samples(self.urls, handler=errors):
            where = f"shard {raw.get('__url__')} key {raw.get('__key__')}"
            if masks and "seg.png" not in raw:
                raise DatasetError(f"{where}: annotation is missing (no seg.png member)")
            try:
                s = decode_sample(raw, need_mask=masks)
            except SampleError as e:
                errors(e)
                self.skipped = errors.total
                continue
            labels = {}
            for f, names in self.classes.items():
                v = s.label if f == "label" else s.meta.get(f, -1)
                v = int(v) if isinstance(v, (int, float)) else -1
                if names and v >= len(names):
                    raise DatasetError(f"{where}: {f} {v} out of range ({len(names)} classes in info.json)")
                labels[f] = v
            mask = None
            if masks:
                if self.seg is None:
                    raise DatasetError(f"{self.root}: info.json has no 'seg_classes'; cannot score masks")
                mask = s.mask.astype(np.int64)  # type: ignore[union-attr]  # need_mask=masks
                if mask.ndim == 3:
                    raise DatasetError(f"{where}: seg.png must be a single-channel index PNG")
                if self.seg_ignore is not None:
                    mask[mask == int(self.seg_ignore)] = IGNORE
                check_mask(mask, self.seg.num_classes, where, s.image.size)
            count += 1
            yield Record(s.key, s.image, labels, mask, s.meta, source=where)
        if count == 0:
            raise DatasetError(f"{self.root}: empty split (no readable sample in {len(self.urls)} shard(s))")
