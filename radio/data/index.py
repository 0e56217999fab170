"""Random access to the samples of local webdataset shards.

One pass over each shard's tar headers (no image bytes are read) finds every sample's byte range; afterwards a
sample is one seek and one read, from any process. The epoch order (radio.data.order) needs this: every rank and
worker reads exactly the samples assigned to it, wherever they are.

Samples group consecutive members by key as webdataset does (`dir/key.ext`, the key ends at the first dot of the
file name). The scan finds whole-shard faults (a tar cut short, a corrupt header, a file that is no tar) and
samples without an image member; both are skipped and reported as `Fault`s. Per-shard results can be cached in
`cache_dir` (keyed by path, size and modification time), so large shard sets are scanned once.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from radio.data.health import Fault
from radio.data.shards import IMAGE_EXTS, SampleError

_NAME = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_OPEN_FILES = 64
SCAN_VERSION = 2  # part of the scan cache's file names: a new layout never reads an old file


class ShardScan(NamedTuple):
    """One shard's usable samples: byte ranges starts, ends (n,) int64, keys (n,) str, and the faults found."""

    starts: np.ndarray
    ends: np.ndarray
    faults: list
    keys: np.ndarray


def split_name(name: str) -> tuple[str | None, str | None]:
    """'dir/000123.seg.png' -> ('dir/000123', 'seg.png'); names without an extension -> (None, None)."""
    m = _NAME.match(name)
    return (m.group(1), m.group(2).lower()) if m else (None, None)


def _empty_scan(faults: list) -> ShardScan:
    return ShardScan(np.zeros(0, np.int64), np.zeros(0, np.int64), faults, np.zeros(0, dtype=str))


def scan_shard(url: str, required: Sequence[str] = IMAGE_EXTS) -> ShardScan:
    """Scan one tar's headers; see the module docstring. A sample needs one member of `required` (image shards:
    an image; feature shards: "features.npy"). Never raises for bad data (faults are returned)."""
    size = os.path.getsize(url)
    groups: list[list[Any]] = []  # [key, start, end, exts]
    faults: list[Fault] = []
    with open(url, "rb") as f:
        try:
            tf = tarfile.open(fileobj=f, mode="r:")
        except tarfile.TarError as e:
            return _empty_scan([Fault("CorruptShard", url, "", f"not a readable tar file ({e})")])
        truncated, kind = None, "TruncatedShard"
        try:
            for m in tf:
                if not m.isfile():
                    continue
                end = m.offset_data + m.size
                if end > size:
                    truncated = f"member {m.name!r} ends at byte {end}, the file has {size}"
                    break
                end = min(size, m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
                key, ext = split_name(m.name)
                if key is None:
                    faults.append(Fault("StrayMember", url, m.name, "tar member without a key.extension name"))
                    continue
                if groups and groups[-1][0] == key:
                    groups[-1][2] = end
                    groups[-1][3].add(ext)
                else:
                    groups.append([key, m.offset, end, {ext}])
        except tarfile.TarError as e:  # a header cut by the end of the file, or garbage in the middle
            at_end = size - tf.offset <= 4 * tarfile.BLOCKSIZE  # room for a pax header + data + a header
            truncated = (f"the file stops at byte {size} inside a header" if at_end
                         else f"unreadable header at byte {tf.offset} ({e})")
            kind = "TruncatedShard" if at_end else "CorruptShard"
        if truncated is None:  # a complete tar ends with two zero blocks right after its last member
            f.seek(tf.offset)
            tail = f.read(1024)
            if len(tail) < 1024:
                truncated = f"no end-of-archive marker: the file stops at byte {size}"
            elif any(tail):
                truncated, kind = f"corrupt header at byte {tf.offset}", "CorruptShard"
        if truncated is not None:
            lost = groups.pop()[0] if groups else ""  # the last sample may be incomplete
            faults.append(Fault(kind, url, "", f"{truncated}; the samples before it are used"
                                + (f" (up to, not including, {lost!r})" if lost else "")))
    keep, keys = [], []
    what = "image" if tuple(required) == tuple(IMAGE_EXTS) else "features"
    for key, start, end, exts in groups:
        if not any(e in exts for e in required):
            faults.append(Fault(f"Missing{what.capitalize()}", url, key, f"no {what} member (one of "
                                f"{tuple(required)}); members: {sorted(exts)}"))
        else:
            keep.append((start, end))
            keys.append(key)
    arr = np.asarray(keep, dtype=np.int64).reshape(-1, 2)
    return ShardScan(arr[:, 0].copy(), arr[:, 1].copy(), faults, np.asarray(keys, dtype=str))


def _cached_scan(url: str, cache_dir: str | None, required: Sequence[str]) -> ShardScan:
    if not cache_dir:
        return scan_shard(url, required)
    st = os.stat(url)
    text = f"{SCAN_VERSION}|{os.path.realpath(url)}|{st.st_size}|{st.st_mtime_ns}|{','.join(required)}"
    path = Path(cache_dir) / f"{hashlib.sha1(text.encode()).hexdigest()}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            faults = [Fault(*f) for f in json.loads(str(z["faults"]))]
            return ShardScan(z["starts"], z["ends"], faults, z["keys"])
    scan = scan_shard(url, required)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, starts=scan.starts, ends=scan.ends, keys=scan.keys,
             faults=np.asarray(json.dumps([list(f) for f in scan.faults])))
    os.replace(tmp, path)
    return scan


@dataclass
class ShardIndex:
    """Every usable sample of a shard list, in shard order then tar order.

    Attributes:
        urls: the shards.
        shard: (N,) int32 shard of each sample; start, end: (N,) int64 its byte range in that shard.
        faults: whole-shard and sample faults found by the scan.
        keys: (N,) str the sample keys.
    """

    urls: list[str]
    shard: np.ndarray
    start: np.ndarray
    end: np.ndarray
    faults: list[Fault] = field(default_factory=list)
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    def __post_init__(self) -> None:
        self._files: dict[str, Any] = {}
        self._pid = os.getpid()

    @classmethod
    def build(cls, urls: Sequence[str], cache_dir: str | None = None, progress: bool = True,
              required: Sequence[str] = IMAGE_EXTS) -> ShardIndex:
        """Scan `urls` (or read their scans from `cache_dir`); samples need a member of `required`."""
        it: Any = urls
        if progress and len(urls) > 8:
            from tqdm import tqdm

            it = tqdm(urls, desc="index shards", unit="shard", leave=False)
        shard, start, end, keys, faults = [], [], [], [], []
        for i, url in enumerate(it):
            scan = _cached_scan(url, cache_dir, tuple(required))
            shard.append(np.full(len(scan.starts), i, dtype=np.int32))
            start.append(scan.starts)
            end.append(scan.ends)
            keys.append(scan.keys)
            faults += scan.faults
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        return cls(list(urls), cat(shard, np.int32), cat(start, np.int64), cat(end, np.int64), faults,
                   cat(keys, str))

    def __len__(self) -> int:
        return int(self.shard.shape[0])

    def counts(self) -> list[int]:
        """Usable samples per shard."""
        return np.bincount(self.shard, minlength=len(self.urls)).tolist()

    def digest(self) -> str:
        """Identifies the sample list (shard paths and usable samples per shard): a resume checks it."""
        text = json.dumps([[os.path.basename(u) for u in self.urls], self.counts()])
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    # -- reading ---------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def _file(self, url: str):
        if self._pid != os.getpid():  # a forked worker: never share file offsets with the parent
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(url)
        if f is None:
            if len(self._files) >= _OPEN_FILES:
                old = next(iter(self._files))
                self._files.pop(old).close()
            f = self._files[url] = open(url, "rb")
        return f

    def read(self, i: int) -> dict[str, Any]:
        """Raw sample i as webdataset gives it: {"__key__", "__url__", ext: bytes, ...}; SampleError if unreadable."""
        url = self.urls[int(self.shard[i])]
        start, end = int(self.start[i]), int(self.end[i])
        try:
            f = self._file(url)
            f.seek(start)
            data = f.read(end - start)
        except OSError as e:  # the shard went away or its storage failed since the scan
            raise SampleError(f"cannot read {end - start} bytes at offset {start}: {e}", url, None) from e
        if len(data) != end - start:
            raise SampleError(f"short read: {len(data)} of {end - start} bytes at offset {start}", url, None)
        raw: dict[str, Any] = {"__url__": url}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
                for m in tf:
                    key, ext = split_name(m.name)
                    if key is None or ext is None or not m.isfile():  # ext is None exactly when key is
                        continue
                    raw["__key__"] = key
                    member = tf.extractfile(m)
                    assert member is not None  # a regular file (checked above) always has one
                    raw[ext] = member.read()
        except tarfile.TarError as e:
            raise SampleError(f"cannot read the sample's tar members: {e}", url, raw.get("__key__")) from e
        return raw
