"""The embedded default data: generated RGB images of coloured shapes, with labels and segmentation masks.

Each image holds 1-3 objects of one shape and one colour class, with a texture, on a textured low-saturation
background. Labels (in the sample's `json`): `label` (= shape class), `shape`, `colour`, `count`, `position`
(quadrant of the objects' centroid), and their integer forms. `seg.png` is a per-pixel mask whose value is
1 + the colour class (0 = background), so a dense probe can find the object by colour.
Generation is deterministic for (seed, split, index).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond")
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.85, 0.12, 0.12),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.92, 0.85, 0.15),
    "magenta": (0.82, 0.20, 0.78),
    "cyan": (0.15, 0.80, 0.85),
}
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
TEXTURES = ("solid", "stripes", "dots", "gradient")
BACKGROUNDS = ("gradient", "noise", "stripes", "checker")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass
class SynthSample:
    key: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, 0 = background, 1 + colour class otherwise
    meta: dict[str, Any]


def _shape_mask(kind: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float,
                angle: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated coordinates
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if kind == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "cross":
        t = 0.3 * r
        return ((np.abs(u) <= r) & (np.abs(v) <= t)) | ((np.abs(v) <= r) & (np.abs(u) <= t))
    if kind == "triangle":
        inside = np.ones_like(xx, dtype=bool)
        for k in range(3):  # three half-planes of an equilateral triangle
            a = angle + k * 2 * math.pi / 3
            inside &= (math.cos(a) * dx + math.sin(a) * dy) <= 0.5 * r
        return inside
    raise ValueError(f"unknown shape {kind!r}")


def _background(rng: np.random.Generator, size: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    def dull() -> np.ndarray:  # low-saturation colour: grey plus a small tint
        grey = rng.uniform(0.2, 0.8)
        return np.clip(grey + rng.uniform(-0.08, 0.08, 3), 0, 1)

    a, b = dull(), dull()
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    if kind == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        t: np.ndarray = ((math.cos(ang) * xx + math.sin(ang) * yy) / size + 1) / 2
    elif kind == "noise":
        coarse = rng.uniform(0, 1, (size // 8 + 1, size // 8 + 1))
        t = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    elif kind == "stripes":
        period = rng.uniform(6, 20)
        t = (np.sin((xx + yy * rng.uniform(-1, 1)) * 2 * math.pi / period) + 1) / 2
    else:  # checker
        cell = int(rng.integers(6, 18))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float64)
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    return img + rng.normal(0, 0.02, img.shape)


def generate(index: int, *, seed: int = 0, split: str = "train", size: int = 128) -> SynthSample:
    """One deterministic sample for (seed, split, index)."""
    rng = np.random.default_rng([seed, SPLIT_IDS.get(split, 3), index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = _background(rng, size, xx, yy)
    shape_id = int(rng.integers(len(SHAPES)))
    colour_id = int(rng.integers(len(COLOURS)))
    count = int(rng.integers(1, 4))
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    base = np.array(list(COLOURS.values())[colour_id])
    mask = np.zeros((size, size), dtype=np.uint8)
    obj = np.zeros((size, size), dtype=bool)
    r_max = size * (0.24 if count == 1 else 0.17)
    for _ in range(count):
        r = rng.uniform(0.45, 1.0) * r_max
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        obj |= _shape_mask(SHAPES[shape_id], xx, yy, cx, cy, r, rng.uniform(0, 2 * math.pi))
    colour = np.clip(base + rng.uniform(-0.06, 0.06, 3), 0, 1)
    if texture == "solid":
        shade = np.ones((size, size))
    elif texture == "stripes":
        shade = 0.8 + 0.2 * (np.sin(xx * 2 * math.pi / rng.uniform(4, 10)) > 0)
    elif texture == "dots":
        p = int(rng.integers(4, 8))
        shade = 1.0 - 0.25 * (((xx % p) < 2) & ((yy % p) < 2))
    else:
        shade = 0.75 + 0.25 * yy / size
    img[obj] = colour[None] * shade[obj][:, None]
    mask[obj] = colour_id + 1
    ys, xs = np.nonzero(obj)
    cy_all, cx_all = (ys.mean(), xs.mean()) if len(ys) else (size / 2, size / 2)
    pos_id = int(cy_all >= size / 2) * 2 + int(cx_all >= size / 2)
    image = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    meta = {
        "label": shape_id, "shape": SHAPES[shape_id], "shape_label": shape_id,
        "colour": list(COLOURS)[colour_id], "colour_label": colour_id, "count": count,
        "position": POSITIONS[pos_id], "position_label": pos_id, "texture": texture,
    }
    return SynthSample(f"{split}-{index:08d}", image, mask, meta)


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def dataset_info() -> dict[str, Any]:
    """Class names of every label field, written next to the shards as `info.json`."""
    return {
        "name": "radio-synth", "label_field": "label", "classes": list(SHAPES),
        "label_fields": {"shape": list(SHAPES), "colour": list(COLOURS), "position": list(POSITIONS),
                         "count": [1, 2, 3]},
        "seg_classes": ["background", *COLOURS], "seg_ignore_index": None,
    }


def write_synth(out: str | Path, count: int, *, val_count: int | None = None, seed: int = 0, size: int = 128,
                shard_size: int = 256, progress: bool = True) -> dict[str, list[str]]:
    """Write `count` training and `val_count` (default count // 4) validation samples as webdataset shards.

    Layout: OUT/train/000000.tar ..., OUT/val/000000.tar ..., OUT/info.json.
    Returns the shard paths per split.
    """
    from radio.data.shards import ShardSink

    out = Path(out)
    val_count = max(1, count // 4) if val_count is None else val_count
    written: dict[str, list[str]] = {}
    for split, n in (("train", count), ("val", val_count)):
        if n <= 0:
            continue
        with ShardSink(out / split, shard_size=shard_size) as sink:
            it = range(n)
            if progress:
                from tqdm import tqdm

                it = tqdm(it, desc=f"synth {split}", unit="img", leave=False)
            for i in it:
                s = generate(i, seed=seed, split=split, size=size)
                sink.write({"__key__": s.key, "png": encode_png(s.image), "seg.png": encode_png(s.mask),
                            "json": json.dumps(s.meta).encode()})
        written[split] = sink.paths
    info = dataset_info() | {"seed": seed, "size": size, "counts": {"train": count, "val": val_count}}
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return written
