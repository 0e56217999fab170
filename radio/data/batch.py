"""Batches: what the data loader hands the training module, and how samples become them.

A training step's batch (`TrainBatch`) holds one `Partition` per partition of the step's stage
(radio.data.schedule), each a batch of images at one resolution with the teachers that supervise it, and the
loader's bad-sample counts for the step; a validation batch is an `ImageBatch`. Both are dataclasses:
Lightning moves them to the device field by field (`move_data_to_device` handles dataclasses) and the
DataLoader pins them through their `pin_memory`.

`StepStream` makes the training batches of one rank (see radio.data.datamodule for the order and the resume);
`PartitionBatcher` is where a sample becomes training input: its seeded random crop (or, for the teachers read
from the feature cache, its aligned crop, radio.cache.views) and its partition's batch.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.utils.data import IterableDataset

from radio.cache.index import FeatureIndex
from radio.cache.reader import CachedSample, FeatureError
from radio.cache.views import CachedTargets, CachedViews
from radio.data.health import fault_from
from radio.data.index import ShardIndex
from radio.data.order import DataOrder, sample_seed
from radio.data.schedule import PartitionConfig, Schedule
from radio.data.shards import MAX_IMAGE_PIXELS, Sample, SampleError, decode_sample
from radio.data.transforms import train_transform

B = TypeVar("B")


def _pinned(batch: B) -> B:
    """A copy of a batch dataclass with every tensor in page-locked memory (the DataLoader's `pin_memory`)."""
    return apply_to_collection(batch, Tensor, Tensor.pin_memory)


@dataclass
class Partition:
    """One partition of a training step: B images at one resolution r and what supervises them.

    image: (B, 3, r, r) float32 in [0, 1]; B is the partition's batch size less its bad samples (may be 0).
    teachers: the names of the teachers that supervise it (None: every teacher).
    weight: its weight in the step's loss.
    resolution: r (0, the default: the image's width).
    label: (B,) int64 class labels (None in hand-made batches); key: the B sample keys.
    cached: the targets of the teachers read from the feature cache (radio.cache), by teacher: CachedTargets
        with summary (B, C_s) or None, B feature crops (C, h_i, w_i), summary_valid (B,) bool; empty without.
    crop: with `cached`, the (B, 6) int64 aligned crop boxes (top, left, height, width in reference cells,
        flip, whole); None without.
    """

    image: Tensor
    teachers: list[str] | None = None
    weight: float = 1.0
    resolution: int = 0
    label: Tensor | None = None
    key: list[str] = field(default_factory=list)
    cached: dict[str, CachedTargets] = field(default_factory=dict)
    crop: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.resolution:
            self.resolution = int(self.image.shape[-1])

    @property
    def size(self) -> int:
        """B, the number of samples."""
        return int(self.image.shape[0])


@dataclass
class TrainBatch:
    """One rank's batch of one training step.

    partitions: the step's partitions, in the order of its stage's `partitions`.
    stage: the index of the step's stage; step: the global step it was made for.
    reads: the samples read for it; faults: the bad ones among them (radio.data.health.Fault dicts), which
        were left out of their partitions.
    """

    partitions: list[Partition]
    stage: int = 0
    step: int = 0
    reads: int = 0
    faults: list[dict[str, str]] = field(default_factory=list)

    def pin_memory(self) -> TrainBatch:
        return _pinned(self)


@dataclass
class ImageBatch:
    """A validation batch: image (B, 3, r, r) float32 in [0, 1], label (B,) int64, key: the B sample keys."""

    image: Tensor
    label: Tensor
    key: list[str]

    def pin_memory(self) -> ImageBatch:
        return _pinned(self)


def collate(samples: list[dict[str, Any]]) -> ImageBatch:
    """Validation samples ({"image" (3, r, r), "label", "key"}) -> an ImageBatch."""
    labels = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return ImageBatch(torch.stack([s["image"] for s in samples]), labels, [s["key"] for s in samples])


class DecodeTransform:
    """Picklable decode + transform step for worker processes."""

    def __init__(self, transform, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.transform = transform
        self.max_pixels = max_pixels

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        s = decode_sample(raw, max_pixels=self.max_pixels)
        return {"image": self.transform(s.image), "label": s.label, "key": s.key}


class PartitionBatcher:
    """Per-sample transforms and partition batches: the place where a sample becomes training input.

    Args:
        schedule: the stages.
        min_crop_scale: lower bound of the random resized crop's area fraction.
        cache: the aligned crops of the cached teachers (None: no cache).
    """

    def __init__(self, schedule: Schedule, min_crop_scale: float, cache: CachedViews | None = None) -> None:
        self.schedule = schedule
        self.cache = cache
        self.transforms = {r: train_transform(r, min_crop_scale) for r in schedule.resolutions()}

    def cached_names(self, cfg: PartitionConfig) -> list[str]:
        """The cached teachers that supervise a partition."""
        return self.cache.names(cfg.teachers) if self.cache is not None else []

    def transform(self, sample: Sample, cfg: PartitionConfig, seed: int) -> dict[str, Any]:
        """One sample for one partition; its randomness comes from `seed` only. May raise SampleError or
        FeatureError (the sample is then skipped and counted)."""
        names = self.cached_names(cfg)
        if names:
            generator = torch.Generator().manual_seed(seed)
            item = self.cache.sample(sample, cfg.resolution, names, generator)  # type: ignore[union-attr, arg-type]
            return {"image": item.image, "label": sample.label, "key": sample.key, "item": item}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image = self.transforms[cfg.resolution](sample.image)
        return {"image": image, "label": sample.label, "key": sample.key}

    def partition(self, items: list[dict[str, Any]], cfg: PartitionConfig) -> Partition:
        """One partition's batch from its transformed samples (possibly fewer than its batch size)."""
        r = cfg.resolution
        names = self.cached_names(cfg)
        if names:  # images, cached targets and crop boxes, stacked together
            extra = self.cache.stack([s["item"] for s in items], names, r)  # type: ignore[union-attr]
        else:
            extra = {"image": torch.stack([s["image"] for s in items]) if items else torch.zeros(0, 3, r, r)}
        teachers = list(cfg.teachers) if cfg.teachers is not None else None
        labels = torch.tensor([s["label"] for s in items], dtype=torch.long)
        return Partition(**extra, label=labels, key=[s["key"] for s in items], resolution=r, teachers=teachers,
                         weight=float(cfg.weight))


class StepStream(IterableDataset):
    """The training batches of one rank from `start_step` on (endless): worker w of W makes steps w, w + W,
    ... (Lightning's in-order round robin keeps the global order); step s's batch is a pure function of
    (seed, s, rank)."""

    def __init__(self, index: ShardIndex, order: DataOrder, batcher: PartitionBatcher, start_step: int = 0,
                 features: FeatureIndex | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__()
        self.index, self.order, self.batcher, self.start_step = index, order, batcher, start_step
        self.features = features
        self.max_pixels = max_pixels

    def __iter__(self) -> Iterator[TrainBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + worker
        while True:
            yield self.batch(step)
            step += workers

    def batch(self, step: int) -> TrainBatch:
        stage = self.order.schedule.stage_index(step)
        cfgs = self.order.schedule.stages[stage].partitions
        faults: list[dict[str, str]] = []
        reads = 0
        parts = []
        for cfg, positions in zip(cfgs, self.order.positions(step)):
            epochs, ids = self.order.samples(positions)
            items = []
            for epoch, i in zip(epochs.tolist(), ids.tolist()):
                reads += 1
                try:
                    sample = self.read(i, self.batcher.cached_names(cfg))
                    items.append(self.batcher.transform(sample, cfg, sample_seed(self.order.seed, epoch, i)))
                except (SampleError, FeatureError) as e:
                    faults.append(fault_from(e, getattr(e, "radio_kind", "SampleError")).to_dict())
            parts.append(self.batcher.partition(items, cfg))
        return TrainBatch(parts, stage, step, reads, faults)

    def read(self, i: int, cached: list[str]) -> Sample:
        """Sample i decoded, with its records of the `cached` teachers when training from the feature cache."""
        sample = decode_sample(self.index.read(i), max_pixels=self.max_pixels)
        if not cached or self.features is None:
            return sample
        return CachedSample.of(sample, self.features.records(i, cached))


__all__ = ["Partition", "TrainBatch", "ImageBatch", "collate", "PartitionBatcher", "StepStream",
           "DecodeTransform"]
