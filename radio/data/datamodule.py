"""LightningDataModule over image shards, with multi-resolution partitions.

Training streams resampled shards (split across nodes and workers by webdataset), shuffles in a buffer, decodes,
and forms one batch per partition of the current stage (radio.data.schedule) at every step: each partition's
images get their own random resized crop + flip at that partition's resolution. Batches are formed inside the
workers; with W workers the loader hands out worker w's j-th batch as step j W + w (in-order round robin), so
each worker knows the step, hence the stage, of every batch it makes. Validation reads the validation shards once
in order at `val_resolution`. Bad samples are skipped and counted (`errors`).

With `cache` (radio.data.cached) feature shards are read beside the image shards, and every partition that a
cached teacher supervises gets one patch-aligned crop + flip per sample, applied to the image and to the cached
grids; its batch also carries "cached" (teacher -> CachedTargets) and "crop" (B, 6).

A training batch is {"partitions": [{"image" (B_i, 3, r_i, r_i), "label" (B_i,), "key", "resolution",
"teachers", "weight"}, ...], "stage": int, "step": int}; a validation batch is {"image", "label", "key"}.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from radio.data.cached import CacheConfig, CachedShardJoin, CachedViews, coerce_config, decode_with_cache, read_layout
from radio.data.schedule import Schedule, StageConfig
from radio.data.shards import ErrorCounter, Sample, decode_sample, resolve_shards
from radio.data.transforms import eval_transform, train_transform


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "key": [s["key"] for s in samples],
    }


class _Transform:
    """Picklable decode + transform step for worker processes."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        s = decode_sample(raw)
        return {"image": self.transform(s.image), "label": s.label, "key": s.key}


class PartitionBatcher:
    """Pipeline stage: decoded samples -> one dict of partition batches per step (see the module docstring).

    Args:
        schedule: the stages.
        min_crop_scale: lower bound of the random resized crop's area fraction.
        start_step: the global step of the first batch (non-zero when resuming).
        cache: the aligned crops of the cached teachers (None: no cache).
    """

    def __init__(self, schedule: Schedule, min_crop_scale: float, start_step: int = 0,
                 cache: Optional[CachedViews] = None) -> None:
        self.schedule = schedule
        self.cache = cache
        self.start_step = start_step
        self.transforms = {r: train_transform(r, min_crop_scale) for r in schedule.resolutions()}

    def __call__(self, samples: Iterator[Sample]) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + worker
        samples = iter(samples)
        while True:
            index = self.schedule.stage_index(step)
            parts = []
            for p in self.schedule.stages[index].partitions:
                chunk = [next(samples) for _ in range(p.batch_size)]
                cached = self.cache.names(p.teachers) if self.cache is not None else []
                if cached:
                    part = self.cache.partition(chunk, p.resolution, cached)
                else:
                    tf = self.transforms[p.resolution]
                    part = {"image": torch.stack([tf(s.image) for s in chunk])}
                parts.append({
                    **part,
                    "label": torch.tensor([s.label for s in chunk], dtype=torch.long),
                    "key": [s.key for s in chunk],
                    "resolution": p.resolution,
                    "teachers": list(p.teachers) if p.teachers is not None else None,
                    "weight": float(p.weight),
                })
            yield {"partitions": parts, "stage": index, "step": step}
            step += workers


class ShardDataModule(L.LightningDataModule):
    """Image shards for distillation.

    Args:
        shards: training shard spec (brace pattern, glob, directory; several joined by `::`).
        val_shards: validation shard spec, or None for no validation.
        resolution: single-partition training: the student's input side in pixels (default 224). Not with
            `stages`.
        batch_size: single-partition training: the batch size per device (default 32). Not with `stages`.
        stages: multi-resolution training: stages of partitions (radio.data.schedule).
        val_resolution: validation image side (default: the largest training resolution); the module resizes
            validation images to every resolution it measures fidelity at.
        val_batch_size: validation batch size (default: the first partition's batch size).
        num_workers: loader worker processes.
        shuffle_buffer: samples held for shuffling.
        min_crop_scale: lower bound of the random resized crop's area fraction.
        seed: seed of the shard resampling (per rank and worker) and of the shuffle buffer: runs are repeatable.
        cache: read these teachers' targets from a feature cache (radio.data.cached.CacheConfig).
    """

    def __init__(self, shards: str, val_shards: Optional[str] = None, resolution: Optional[int] = None,
                 batch_size: Optional[int] = None, stages: Optional[list[StageConfig]] = None,
                 val_resolution: Optional[int] = None, val_batch_size: Optional[int] = None, num_workers: int = 2,
                 shuffle_buffer: int = 1000, min_crop_scale: float = 0.35, seed: int = 0,
                 cache: Optional[CacheConfig] = None) -> None:
        super().__init__()
        if stages and (resolution is not None or batch_size is not None):
            raise ValueError("data: give either data.resolution/data.batch_size (one partition) or data.stages, "
                             "not both")
        if stages:
            self.schedule = Schedule(list(stages))
        else:
            self.schedule = Schedule.single(resolution or 224, batch_size or 32)
        first = self.schedule.final.partitions[0]
        self.resolution = first.resolution  # the main (final-stage, first-partition) resolution
        self.batch_size = first.batch_size
        self.shards = shards
        self.val_shards = val_shards
        self.val_resolution = val_resolution or max(self.schedule.resolutions())
        self.val_batch_size = val_batch_size or self.schedule.stages[0].partitions[0].batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.min_crop_scale = min_crop_scale
        self.seed = seed
        self.errors = ErrorCounter()
        self.cache = coerce_config(cache) if cache is not None else None
        self.cache_layout = None
        self._train_urls: list[str] = []
        self._val_urls: list[str] = []

    def setup(self, stage: Optional[str] = None) -> None:
        self._train_urls = resolve_shards(self.shards, "data.shards")
        if self.cache is not None:
            self.cache_layout = read_layout(self.cache, self._train_urls)
        if self.val_shards:
            self._val_urls = resolve_shards(self.val_shards, "data.val_shards")

    def _start_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_step) if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        import webdataset as wds

        if not self._train_urls:
            self.setup("fit")
        layout = self.cache_layout
        ds = wds.DataPipeline(
            wds.ResampledShards(self._train_urls, seed=self.seed, deterministic=True),
            CachedShardJoin(layout, self.errors) if layout else wds.tarfile_to_samples(handler=self.errors),
            wds.detshuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), seed=self.seed),
            wds.map(decode_with_cache if layout else decode_sample, handler=self.errors),
            PartitionBatcher(self.schedule, self.min_crop_scale, self._start_step(),
                             cache=CachedViews(layout, self.min_crop_scale) if layout else None),
        )
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        import webdataset as wds

        if not self.val_shards:
            return []
        if not self._val_urls:
            self.setup("validate")
        workers = min(self.num_workers, len(self._val_urls))
        ds = wds.DataPipeline(
            wds.SimpleShardList(self._val_urls),
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=self.errors),
            wds.map(_Transform(eval_transform(self.val_resolution)), handler=self.errors),
        )
        return DataLoader(ds, batch_size=self.val_batch_size, num_workers=workers, collate_fn=collate,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=False)
