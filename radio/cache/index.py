"""Random access to the cached teacher records of an image index's samples (training from the feature cache).

`radio cache` writes, per teacher, one feature shard per image shard (same file name, the same keys in the same
order, less the images it could not decode). The feature shards are scanned like the image shards
(radio.data.index, a sample needs a `features.npy` member) and each image sample is joined to its record by
(shard, key), so any rank or loader worker reads exactly the records of the samples the epoch order gives it.
A key lost to a fault of its feature shard (a truncated or corrupt tar, a record without features, reported as a
Fault) or one that `radio cache` skipped (its image did not decode; meta.json `skipped_keys`) reads as
`MissingFeatures`: the sample is then skipped and counted, never filled in. Any other key that an intact feature
shard lacks means the cache was not written from these image shards: `CacheMismatchError` before any compute,
naming the feature shard and the key.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from radio.cache.format import CacheMismatchError
from radio.cache.reader import CacheLayout, MissingFeatures
from radio.data.health import Fault
from radio.data.index import ShardIndex
from radio.data.shards import SampleError

FEATURE_MEMBERS = ("features.npy",)


def join_rows(images: ShardIndex, features: ShardIndex) -> np.ndarray:
    """(N,) int64: for each image sample, the row of `features` with the same shard and key, or -1."""
    rows = np.full(len(images), -1, dtype=np.int64)
    shards = np.arange(len(images.urls) + 1)
    img_bounds, feat_bounds = np.searchsorted(images.shard, shards), np.searchsorted(features.shard, shards)
    for s in range(len(images.urls)):
        f0, f1 = int(feat_bounds[s]), int(feat_bounds[s + 1])
        where = {k: f0 + j for j, k in enumerate(features.keys[f0:f1].tolist())}
        i0, i1 = int(img_bounds[s]), int(img_bounds[s + 1])
        rows[i0:i1] = [where.get(k, -1) for k in images.keys[i0:i1].tolist()]
    return rows


class FeatureIndex:
    """The cached records of every sample of an image index, per cached teacher.

    Args:
        layout: the cached teachers (radio.cache.reader.read_layout).
        images: the image shards' index.
        cache_dir: scan cache (as for the image index).
        progress: a progress bar over many shards.

    Attributes:
        faults: the feature shards' faults found by the scan (truncated or corrupt tar, a record without
            features.npy).
    """

    def __init__(self, layout: CacheLayout, images: ShardIndex, cache_dir: str | None = None,
                 progress: bool = False) -> None:
        self.indexes: dict[str, ShardIndex] = {}
        self.rows: dict[str, np.ndarray] = {}
        self.faults: list[Fault] = []
        self.image_urls = list(images.urls)
        self.image_keys = images.keys
        self.image_shard = images.shard
        for name, t in layout.teachers.items():
            urls = [t.feature_shard(u) for u in images.urls]
            idx = ShardIndex.build(urls, cache_dir, progress=progress, required=FEATURE_MEMBERS)
            self.indexes[name], self.rows[name] = idx, join_rows(images, idx)
            self.faults += idx.faults
            self._check_unexplained(name, t.directory, t.meta, idx)

    def _check_unexplained(self, name: str, directory: str, meta: dict, idx: ShardIndex) -> None:
        """Refuse records missing from an intact feature shard that `radio cache` did not skip."""
        if "skipped_keys" not in meta:  # a cache written before the writer recorded them: all read as missing
            return
        skipped = {(shard, key) for shard, keys in meta["skipped_keys"].items() for key in keys}
        faulted = {(f.shard, f.key) for f in idx.faults}
        bad = []
        for i in np.flatnonzero(self.rows[name] < 0).tolist():
            shard, key = idx.urls[int(self.image_shard[i])], str(self.image_keys[i])
            if (shard, "") in faulted or (shard, key) in faulted or (os.path.basename(shard), key) in skipped:
                continue
            bad.append((shard, key))
        if bad:
            shard, key = bad[0]
            raise CacheMismatchError(
                f"feature cache {directory} ({name}): {len(bad)} training sample(s) have no cached record although "
                f"their feature shard is intact and `radio cache` did not skip them, e.g. key {key!r} of {shard}; "
                "the cache was written from other image shards, or the shards changed since: rerun `radio cache`")

    def missing(self, name: str) -> int:
        """Image samples without a record of teacher `name`."""
        return int((self.rows[name] < 0).sum())

    def records(self, i: int, names: list[str] | None = None) -> dict[str, Any]:
        """Image sample i's raw cached record per teacher of `names` (None: all) ({"__key__", "__url__",
        "features.npy", ...}), or MissingFeatures where there is none."""
        out: dict[str, Any] = {}
        for name in self.indexes if names is None else names:
            idx = self.indexes[name]
            row = int(self.rows[name][i])
            if row < 0:
                out[name] = MissingFeatures(idx.urls[int(self.image_shard[i])], str(self.image_keys[i]))
                continue
            try:
                out[name] = idx.read(row)
            except SampleError:  # an unreadable byte range: read as missing, named the same way
                out[name] = MissingFeatures(idx.urls[int(self.image_shard[i])], str(self.image_keys[i]))
        return out
