"""The types every evaluation dataset reader shares (eval.datasets, eval.shard_split).

A reader is a `Split` that yields `Record`s: an RGB PIL image, integer labels per label field, and for
segmentation layouts a class-index mask (H, W) int64 in which `IGNORE` (-1) marks pixels that are not scored.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IGNORE = -1


class DatasetError(ValueError):
    """A malformed dataset; the message names the file or directory."""


@dataclass
class Record:
    """One evaluation sample.

    image: RGB image; labels: label field -> class index (-1 = unlabelled); mask: (H, W) int64 class indices with
    IGNORE for unscored pixels, or None; meta: the sample's raw metadata (shards' json); source: where it came from.
    """

    key: str
    image: Image.Image
    labels: dict[str, int] = field(default_factory=dict)
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass
class SegInfo:
    """Segmentation classes of a dataset: `classes[i]` names class index i (the ignored value is not a class)."""

    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Split:
    """One split of a dataset. Iterate it for Records; `masks=True` also reads and checks the masks."""

    layout: str = ""

    def __init__(self, root: Path, name: str, classes: dict[str, list[str]], seg: SegInfo | None) -> None:
        self.root, self.name, self.classes, self.seg = Path(root), name, classes, seg

    @property
    def label_fields(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def records(self, masks: bool = False) -> Iterator[Record]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {self.name!r})"


@dataclass
class Dataset:
    """A train and a val split of one layout."""

    root: Path
    layout: str
    train: Split
    val: Split

    @property
    def classes(self) -> dict[str, list[str]]:
        return self.train.classes

    @property
    def seg(self) -> SegInfo | None:
        return self.train.seg


def check_mask(mask: np.ndarray, num_classes: int, where: str, image_size: tuple[int, int] | None = None) -> None:
    """Every value must be a class index in [0, num_classes) or IGNORE; sizes must match the image (W, H)."""
    if image_size is not None and (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise DatasetError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                           f"{image_size[0]}x{image_size[1]}")
    bad = (mask != IGNORE) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = sorted(set(np.unique(mask[bad]).tolist()))[:8]
        raise DatasetError(f"{where}: class index {values} out of range (this dataset has {num_classes} classes)")
