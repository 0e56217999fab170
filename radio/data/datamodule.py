"""LightningDataModule over image shards, with multi-resolution partitions and an exact, resumable data order.

Training reads samples by random access (radio.data.index) in the epoch order of radio.data.order: each epoch
is a pseudo-random permutation of every sample, and each step takes the next global batch of it, split across
ranks, so every sample goes to exactly one rank once per epoch. A step's batch is a pure function of (seed,
step, rank): loader workers make whole steps (worker w of W makes steps w, w + W, ... in Lightning's in-order
round robin), each sample's random crop is seeded by (seed, epoch, sample), and a resume restarts at the saved
step (`state_dict` / `load_state_dict`, which Lightning stores in checkpoints). Validation reads the validation
shards once in order at `val_resolution`.

Bad data is skipped and reported, never fatal by itself (radio.data.health): shard faults are found when the
index is built; sample faults (undecodable image, image over `max_image_pixels` (never decoded), failed
per-sample check) in the worker that reads the sample, and they reach the main process inside the batch
(`TrainBatch.faults`); the module enforces `max_bad_fraction`.

With `cache` (radio.cache) each sample's cached teacher records are read beside it (radio.cache.index)
and every partition that a cached teacher supervises gets one patch-aligned crop + flip per sample (seeded like
the plain crops), applied to the image and to the cached grids; its partition also carries `cached`
(teacher -> CachedTargets) and `crop` (B, 6). A missing or malformed record skips its sample like a bad image.

Training batches are radio.data.batch.TrainBatch (one Partition per partition of the step's stage, B_i images
each: the partition's batch size less any bad samples), validation batches radio.data.batch.ImageBatch.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from radio.cache.config import CacheConfig, coerce_config
from radio.cache.index import FeatureIndex
from radio.cache.reader import CacheLayout, read_layout
from radio.cache.views import CachedViews
from radio.data.batch import DecodeTransform, PartitionBatcher, StepStream, TrainBatch, collate
from radio.data.health import BadDataError, DataHealth, gather_health
from radio.data.index import ShardIndex
from radio.data.order import DataOrder
from radio.data.schedule import Schedule, StageConfig
from radio.data.shards import MAX_IMAGE_PIXELS, ErrorCounter, resolve_shards
from radio.data.transforms import eval_transform
from radio.ranges import COUNT, NON_NEGATIVE_INT, OPTIONAL_COUNT, PROBABILITY, Range, fields_errors

log = logging.getLogger(__name__)
STATE_VERSION = 1
DEFAULT_RESOLUTION, DEFAULT_BATCH_SIZE = 224, 32  # single-partition training when the recipe gives none
# Allowed values of the data section's plain fields (resolutions are checked against the patch grid apart).
DATA_RANGES: dict[str, Range] = {
    "batch_size": OPTIONAL_COUNT, "val_batch_size": OPTIONAL_COUNT, "num_workers": NON_NEGATIVE_INT,
    "min_crop_scale": Range(lo=0, hi=1, lo_open=True), "seed": NON_NEGATIVE_INT, "max_bad_fraction": PROBABILITY,
    "min_reads_for_bad_fraction": NON_NEGATIVE_INT, "max_image_pixels": COUNT,
}


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
        num_workers: loader worker processes (the batches do not depend on it).
        min_crop_scale: lower bound of the random resized crop's area fraction.
        seed: seed of the epoch permutations and of every sample's augmentation: runs are repeatable.
        max_bad_fraction: the run stops (BadDataError) when more than this fraction of the samples read so far
            were bad, once at least `min_reads_for_bad_fraction` were read; also checked on the shard scan.
        min_reads_for_bad_fraction: samples read (over all ranks) before the bad fraction is judged.
        index_cache: directory for per-shard scan results (shared by ranks and runs; ranks split the scanning).
        cache: read these teachers' targets from a feature cache (radio.cache.config.CacheConfig).
        max_image_pixels: images whose header declares more pixels (width x height) are bad data, skipped and
            counted (kind "OversizedImage") without being decoded; default: PIL's decompression-bomb warning
            threshold (89,478,485 pixels). PIL refuses images over twice its threshold whatever this says.
    """

    def __init__(self, shards: str, val_shards: str | None = None, resolution: int | None = None,
                 batch_size: int | None = None, stages: list[StageConfig] | None = None,
                 val_resolution: int | None = None, val_batch_size: int | None = None, num_workers: int = 2,
                 min_crop_scale: float = 0.35, seed: int = 0, max_bad_fraction: float = 0.01,
                 min_reads_for_bad_fraction: int = 1000, index_cache: str | None = None,
                 cache: CacheConfig | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__()
        if stages and (resolution is not None or batch_size is not None):
            raise ValueError("data: give either data.resolution/data.batch_size (one partition) or data.stages, "
                             "not both")
        errors = fields_errors("data", dict(batch_size=batch_size, val_batch_size=val_batch_size,
                                            num_workers=num_workers, min_crop_scale=min_crop_scale, seed=seed,
                                            max_bad_fraction=max_bad_fraction, max_image_pixels=max_image_pixels,
                                            min_reads_for_bad_fraction=min_reads_for_bad_fraction), DATA_RANGES)
        for key, res in (("resolution", resolution), ("val_resolution", val_resolution)):
            if res is not None and not COUNT.accepts(res):
                errors.append(f"data.{key}: must be a positive number of pixels (an integer >= 1), got {res!r}")
        if errors:
            raise ValueError("; ".join(errors))
        if stages:
            self.schedule = Schedule(list(stages))
        else:  # None (not given) means the default; 0 or less never reaches here
            self.schedule = Schedule.single(DEFAULT_RESOLUTION if resolution is None else resolution,
                                            DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
        first = self.schedule.final.partitions[0]
        self.resolution = first.resolution  # the main (final-stage, first-partition) resolution
        self.batch_size = first.batch_size
        self.shards = shards
        self.val_shards = val_shards
        self.val_resolution = max(self.schedule.resolutions()) if val_resolution is None else val_resolution
        self.val_batch_size = (self.schedule.stages[0].partitions[0].batch_size if val_batch_size is None
                               else val_batch_size)
        self.num_workers = num_workers
        self.min_crop_scale = min_crop_scale
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.min_reads_for_bad_fraction = min_reads_for_bad_fraction
        self.index_cache = index_cache
        self.max_image_pixels = max_image_pixels
        self.errors = ErrorCounter()  # validation reads
        self.health = DataHealth()  # training: distinct bad items seen by this process
        self.cache = coerce_config(cache) if cache is not None else None
        self.cache_layout: CacheLayout | None = None
        self.index: ShardIndex | None = None
        self.features: FeatureIndex | None = None
        self.order: DataOrder | None = None
        self._train_urls: list[str] = []
        self._val_urls: list[str] = []
        self._resume: dict[str, Any] = {}
        self._next_step: int | None = None

    # -- setup -----------------------------------------------------------------------------------------------
    def _layout(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(getattr(trainer, "world_size", 1)), int(getattr(trainer, "global_rank", 0))

    def setup(self, stage: str | None = None) -> None:
        self._train_urls = resolve_shards(self.shards, "data.shards")
        if self.cache is not None and self.cache_layout is None:
            self.cache_layout = read_layout(self.cache, self._train_urls)
        if self.val_shards:
            self._val_urls = resolve_shards(self.val_shards, "data.val_shards")
        if stage in (None, "fit") and self.index is None:
            self.index = self._build_index()

    def _build_index(self) -> ShardIndex:
        world, rank = self._layout()
        trainer = getattr(self, "trainer", None)
        if self.index_cache and world > 1 and trainer is not None:  # ranks scan a share each into the cache
            ShardIndex.build(self._train_urls[rank::world], self.index_cache, progress=rank == 0)
            trainer.strategy.barrier("radio-index")
        index = ShardIndex.build(self._train_urls, self.index_cache, progress=rank == 0)
        faults = list(index.faults)
        if self.cache_layout is not None:
            self.features = FeatureIndex(self.cache_layout, index, self.index_cache, progress=rank == 0)
            faults += self.features.faults
        if rank == 0:
            self.health.log_new(faults)
        else:
            self.health.record(faults)
        if len(index) == 0:
            raise BadDataError(f"data.shards: the {len(self._train_urls)} shard(s) of {self.shards!r} hold no "
                               f"usable sample; {self.health.summary()}")
        # samples lost at the scan (a stray member is no sample; shard faults hide an unknown number)
        lost = sum(1 for f in index.faults if f.key and f.kind != "StrayMember")
        if lost > self.max_bad_fraction * (len(index) + lost):
            raise BadDataError(f"data.shards: {lost} of {len(index) + lost} samples are unusable, more than "
                               f"data.max_bad_fraction = {self.max_bad_fraction:g}; {self.health.summary()}")
        return index

    # -- training --------------------------------------------------------------------------------------------
    def make_order(self) -> DataOrder:
        """The data order of this rank, positioned for a resume if a data state was loaded."""
        if self.index is None:
            self.setup("fit")
        assert self.index is not None  # setup("fit") builds it
        world, rank = self._layout()
        order = DataOrder(len(self.index), self.schedule, self.seed, world, rank)
        state = self._resume
        if state:
            if state.get("index_digest") != self.index.digest() or state.get("seed") != self.seed:
                log.warning("resuming with a different shard set or data seed than the checkpoint's: the data "
                            "order from here on differs from the interrupted run's")
            else:
                order = order.with_offset_for(int(state["next_step"]), int(state["next_position"]))
        return order

    def _start_step(self) -> int:
        if self._next_step is not None:  # a loaded data state, or batches already consumed
            return self._next_step
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_step) if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        if self.order is None:
            self.order = self.make_order()
        assert self.index is not None  # make_order built it
        start = self._start_step()
        self._next_step = start
        views = CachedViews(self.cache_layout, self.min_crop_scale) if self.cache_layout is not None else None
        stream = StepStream(self.index, self.order, PartitionBatcher(self.schedule, self.min_crop_scale, views),
                            start, self.features, self.max_image_pixels)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Called by Lightning just before a batch is used: the data position and the faults it carries."""
        if isinstance(batch, TrainBatch):
            self._next_step = batch.step + 1
            self.health.log_new(batch.faults)
        return batch

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the data stream stands (plain types; stored in checkpoints by Lightning)."""
        if self.index is None or self.order is None or self._next_step is None:
            return {}
        health = gather_health(self.health)
        return {"version": STATE_VERSION, "seed": self.seed, "next_step": self._next_step,
                "next_position": self.order.step_start(self._next_step), "num_samples": len(self.index),
                "index_digest": self.index.digest(), "health": health.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state_dict.get('version')} in the checkpoint; this radio "
                             f"reads version {STATE_VERSION}")
        self._resume = dict(state_dict)
        self._next_step = int(state_dict["next_step"])
        self.order = None
        self.health = DataHealth.from_state(state_dict.get("health"))

    # -- validation ------------------------------------------------------------------------------------------
    def val_dataloader(self) -> DataLoader | list:
        import webdataset as wds

        if not self.val_shards:
            return []
        if not self._val_urls:
            self._val_urls = resolve_shards(self.val_shards, "data.val_shards")
        workers = min(self.num_workers, len(self._val_urls))
        ds = wds.DataPipeline(
            wds.SimpleShardList(self._val_urls),
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=self.errors),
            wds.map(DecodeTransform(eval_transform(self.val_resolution), self.max_image_pixels),
                    handler=self.errors),
        )
        return DataLoader(ds, batch_size=self.val_batch_size, num_workers=workers, collate_fn=collate,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=False)


__all__ = ["ShardDataModule", "DATA_RANGES", "DEFAULT_RESOLUTION", "DEFAULT_BATCH_SIZE"]
