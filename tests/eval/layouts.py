"""Dataset layouts in miniature, built from the synth generator: ImageFolder (ImageNet), ADE20K and VOC trees.

Images are synth images; ImageFolder classes are the colour names; segmentation masks are the synth masks
(0 = background, 1 + colour class), stored the way each benchmark stores them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from radio.data.synth import COLOURS, generate

COLOUR_NAMES = list(COLOURS)


def _samples(split: str, n: int, size: int):
    return [generate(i, seed=7, split=split, size=size) for i in range(n)]


def make_imagefolder(root: Path, n_train: int = 48, n_val: int = 24, size: int = 32) -> Path:
    """root/{train,val}/<colour>/<key>.jpg"""
    for split, n in (("train", n_train), ("val", n_val)):
        for s in _samples(split, n, size):
            d = root / split / s.meta["colour"]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(s.image).save(d / f"{s.key}.jpg", quality=95)
    return root


def make_ade20k(root: Path, n_train: int = 48, n_val: int = 24, size: int = 32) -> Path:
    """root/images/{training,validation}/*.jpg + root/annotations/.../*.png; stored value 0 = "other" (ignored),
    1 + colour class for the objects, as ADE20K stores classes 1..150."""
    for split, sub, n in (("train", "training", n_train), ("val", "validation", n_val)):
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / sub).mkdir(parents=True, exist_ok=True)
        for s in _samples(split, n, size):
            Image.fromarray(s.image).save(root / "images" / sub / f"ADE_{s.key}.jpg", quality=95)
            Image.fromarray(s.mask).save(root / "annotations" / sub / f"ADE_{s.key}.png")
    return root


def voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved), 256 entries flattened."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def make_voc(root: Path, n_train: int = 48, n_val: int = 24, size: int = 32) -> Path:
    """root/JPEGImages/*.jpg, root/SegmentationClass/*.png (palette PNGs: 0 background, 1 + colour class, a 255
    boundary ring around objects), root/ImageSets/Segmentation/{train,val}.txt."""
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        ids = []
        for s in _samples(split, n, size):
            key = f"2007_{s.key}"
            ids.append(key)
            Image.fromarray(s.image).save(root / "JPEGImages" / f"{key}.jpg", quality=95)
            mask = s.mask.copy()
            obj = mask > 0
            grown = obj.copy()
            grown[1:] |= obj[:-1]
            grown[:-1] |= obj[1:]
            grown[:, 1:] |= obj[:, :-1]
            grown[:, :-1] |= obj[:, 1:]
            mask[grown & ~obj] = 255  # VOC's "void" boundary
            im = Image.fromarray(mask.astype(np.uint8), mode="P")
            im.putpalette(voc_palette())
            im.save(root / "SegmentationClass" / f"{key}.png")
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root
