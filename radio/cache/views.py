"""The datamodule's hook for cached teachers: per sample one aligned view (radio.cache.aligned) applied to its
image and to its cached grids (radio.cache.reader), and a partition's batch of images, cached targets and crop
boxes. Summary targets follow `data.cache.summary` (the package overview, radio.cache, says how)."""
from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from radio.cache.aligned import CropView, canvas_image, crop_grid, crop_image, draw_view
from radio.cache.reader import CachedSample, CacheLayout, read_features


class CachedTargets(NamedTuple):
    """A partition's cached targets of one teacher.

    summary: (B, C_s) the canvas summaries, or None (teacher without one); features: B crops (C, h_i, w_i), sizes
    varying with each sample's box; summary_valid: (B,) bool, the samples whose summary target holds.
    """

    summary: Tensor | None
    features: list[Tensor]
    summary_valid: Tensor


class CachedItem(NamedTuple):
    """One sample's aligned view: image (3, r, r), the view, per cached teacher its feature crop (C, h', w') and
    its canvas summary (C_s,) or None."""

    image: Tensor
    view: CropView
    features: dict[str, Tensor]
    summaries: dict[str, Tensor | None]


class CachedViews:
    """The PartitionBatcher's hook: one aligned view per sample, applied to its image and its cached grids."""

    def __init__(self, layout: CacheLayout, min_scale: float) -> None:
        self.layout = layout
        self.min_scale = min_scale

    def names(self, partition_teachers: list[str] | None) -> list[str]:
        """The cached teachers that supervise a partition (its `teachers`, None meaning all)."""
        return [n for n in self.layout.teachers if partition_teachers is None or n in partition_teachers]

    def sample(self, s: CachedSample, resolution: int, names: list[str],
               generator: torch.Generator | None = None) -> CachedItem:
        """One sample's aligned view, its image at `resolution` and its cached teachers' crops. Raises
        FeatureError for a missing or malformed cached record (the caller skips the sample)."""
        from torchvision.transforms.v2.functional import to_image

        ref = self.layout.ref
        view = draw_view(ref, self.min_scale, self.layout.whole_view, generator=generator)
        outs = {n: read_features(s, self.layout.teachers[n]) for n in names}
        scale = max(1, math.ceil(resolution / ref.resolution))
        image = crop_image(canvas_image(to_image(s.image), ref.resolution, scale), view, ref, resolution)
        feats = {n: crop_grid(o.features, view, ref, self.layout.teachers[n].geometry) for n, o in outs.items()}
        return CachedItem(image, view, feats, {n: o.summary for n, o in outs.items()})

    def stack(self, items: list[CachedItem], names: list[str], resolution: int) -> dict[str, Any]:
        """{"image" (B, 3, r, r), "cached": name -> CachedTargets, "crop" (B, 6) int: top, left, height, width
        (reference cells), flip, whole} of one partition's items (B may be 0)."""
        views = [it.view for it in items]
        if self.layout.summary == "exact":
            valid = torch.tensor([v.whole and not v.flip for v in views], dtype=torch.bool)
        else:
            valid = torch.ones(len(views), dtype=torch.bool)
        cached = {}
        for n in names:
            summ = [it.summaries[n] for it in items]
            has = self.layout.teachers[n].has_summary and len(items) > 0
            cached[n] = CachedTargets(torch.stack(cast("list[Tensor]", summ)) if has else None,
                                      [it.features[n] for it in items], valid)
        crop = torch.tensor([[v.top, v.left, v.height, v.width, int(v.flip), int(v.whole)] for v in views],
                            dtype=torch.long).reshape(-1, 6)
        image = (torch.stack([it.image for it in items]) if items
                 else torch.zeros(0, 3, resolution, resolution))
        return {"image": image, "cached": cached, "crop": crop}
