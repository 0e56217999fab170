"""LightningDataModule over image shards.

Training streams resampled shards (split across nodes and workers by webdataset), shuffles in a buffer,
decodes, and applies a random resized crop + flip at the student's resolution. Validation reads the validation
shards once in order. Bad samples are skipped and counted (`errors`).
"""
from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from radio.data.shards import ErrorCounter, decode_sample, resolve_shards
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


class ShardDataModule(L.LightningDataModule):
    """Image shards for distillation.

    Args:
        shards: training shard spec (brace pattern, glob, directory; several joined by `::`).
        val_shards: validation shard spec, or None for no validation.
        resolution: student input side in pixels (a multiple of the student's patch size).
        batch_size: training batch size per device.
        val_batch_size: validation batch size (default: batch_size).
        num_workers: loader worker processes.
        shuffle_buffer: samples held for shuffling.
        min_crop_scale: lower bound of the random resized crop's area fraction.
        seed: seed of the shard resampling.
    """

    def __init__(self, shards: str, val_shards: Optional[str] = None, resolution: int = 224,
                 batch_size: int = 32, val_batch_size: Optional[int] = None, num_workers: int = 2,
                 shuffle_buffer: int = 1000, min_crop_scale: float = 0.35, seed: int = 0) -> None:
        super().__init__()
        self.shards = shards
        self.val_shards = val_shards
        self.resolution = resolution
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.min_crop_scale = min_crop_scale
        self.seed = seed
        self.errors = ErrorCounter()
        self._train_urls: list[str] = []
        self._val_urls: list[str] = []

    def setup(self, stage: Optional[str] = None) -> None:
        self._train_urls = resolve_shards(self.shards, "data.shards")
        if self.val_shards:
            self._val_urls = resolve_shards(self.val_shards, "data.val_shards")

    def _loader(self, dataset, batch_size: int, workers: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        import webdataset as wds

        if not self._train_urls:
            self.setup("fit")
        ds = wds.DataPipeline(
            wds.ResampledShards(self._train_urls, seed=self.seed, deterministic=True),
            wds.tarfile_to_samples(handler=self.errors),
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100)),
            wds.map(_Transform(train_transform(self.resolution, self.min_crop_scale)), handler=self.errors),
        )
        return self._loader(ds, self.batch_size, self.num_workers)

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
            wds.map(_Transform(eval_transform(self.resolution)), handler=self.errors),
        )
        return self._loader(ds, self.val_batch_size, workers)
