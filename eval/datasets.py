"""Dataset readers for the probes, with validation: ImageFolder (ImageNet layout), ADE20K, VOC and labelled shards.

Every reader is a `Split` that yields `Record`s: an RGB PIL image, integer labels per label field, and for
segmentation layouts a class-index mask (H, W) int64 in which `IGNORE` (-1) marks pixels that are not scored.

Layouts (`open_dataset(path)` detects them; `layout=` forces one):
  shards       DIR/train/*.tar, DIR/val/*.tar (+ DIR/info.json): `radio data synth` / `radio data pack` output;
               labels from each sample's json, masks from `seg.png`
  imagefolder  DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg (ImageNet layout)
  ade20k       DIR/images/{training,validation}/*.jpg, DIR/annotations/{training,validation}/*.png;
               index PNGs, 0 = "other" is ignored, class c is stored as c (1..150)
  voc          DIR/JPEGImages/*.jpg, DIR/SegmentationClass/*.png (palette index PNGs, 255 = ignored boundary),
               DIR/ImageSets/Segmentation/{train,val}.txt

A malformed dataset (missing annotation, class index out of range, empty split, unreadable file) raises
`DatasetError` naming the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from PIL import Image

IGNORE = -1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
LAYOUTS = ("shards", "imagefolder", "ade20k", "voc")
ADE20K_SPLITS = {"train": "training", "val": "validation"}
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


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
    mask: Optional[np.ndarray] = None
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

    def __init__(self, root: Path, name: str, classes: dict[str, list[str]], seg: Optional[SegInfo]) -> None:
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
    def seg(self) -> Optional[SegInfo]:
        return self.train.seg


def open_image(path: Path) -> Image.Image:
    """An RGB image file; one over radio.data.shards.MAX_IMAGE_PIXELS is refused before it is decoded."""
    from radio.data.shards import open_image as decode_image

    try:
        return decode_image(path.read_bytes())
    except Exception as e:
        raise DatasetError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e


def read_index_mask(path: Path) -> np.ndarray:
    """An index PNG as (H, W) int64 (palette PNGs give their indices, not colours)."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation is missing")
    from radio.data.shards import open_image as decode_image

    try:
        im = decode_image(path.read_bytes(), mode=None)
        if im.mode not in ("P", "L", "I", "I;16"):
            raise DatasetError(f"{path}: expected a single-channel index PNG, got mode {im.mode!r}")
        return np.array(im).astype(np.int64)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: unreadable annotation ({type(e).__name__}: {e})") from e


def check_mask(mask: np.ndarray, num_classes: int, where: str, image_size: Optional[tuple[int, int]] = None) -> None:
    """Every value must be a class index in [0, num_classes) or IGNORE; sizes must match the image (W, H)."""
    if image_size is not None and (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise DatasetError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                           f"{image_size[0]}x{image_size[1]}")
    bad = (mask != IGNORE) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = sorted(set(np.unique(mask[bad]).tolist()))[:8]
        raise DatasetError(f"{where}: class index {values} out of range (this dataset has {num_classes} classes)")


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# -- ImageFolder ------------------------------------------------------------------------------------------------
class ImageFolderSplit(Split):
    layout = "imagefolder"

    def __init__(self, root: Path, name: str, class_names: Optional[list[str]] = None) -> None:
        directory = Path(root) / name
        if not directory.is_dir():
            raise DatasetError(f"{directory}: split directory is missing (ImageFolder layout: "
                               f"{root}/{{train,val}}/<class>/*.jpg)")
        found = sorted(d.name for d in directory.iterdir() if d.is_dir())
        classes = class_names or found
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(f"{directory}: class folder(s) {unknown} are not training classes")
        self.files = [(p, classes.index(c)) for c in found for p in _images_in(directory / c)]
        if not self.files:
            raise DatasetError(f"{directory}: empty split (no images in class sub-folders)")
        super().__init__(Path(root), name, {"label": list(classes)}, None)

    def __len__(self) -> int:
        return len(self.files)

    def records(self, masks: bool = False) -> Iterator[Record]:
        if masks:
            raise DatasetError(f"{self.root}: an ImageFolder tree has no segmentation masks")
        for path, ci in self.files:
            yield Record(str(path.relative_to(self.root)), open_image(path), {"label": ci}, source=str(path))


# -- ADE20K -----------------------------------------------------------------------------------------------------
class ADE20KSplit(Split):
    """ADEChallengeData2016 layout. Stored value 0 ("other") is ignored; value c in 1..K becomes class c - 1."""

    layout = "ade20k"

    def __init__(self, root: Path, name: str, num_classes: int = 150, class_names: Optional[list[str]] = None):
        sub = ADE20K_SPLITS.get(name, name)
        img_dir, ann_dir = Path(root) / "images" / sub, Path(root) / "annotations" / sub
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise DatasetError(f"{d}: directory is missing (ADE20K layout: images/{sub}, annotations/{sub})")
        images = _images_in(img_dir)
        if not images:
            raise DatasetError(f"{img_dir}: empty split (no images)")
        self.pairs = []
        for p in images:
            ann = ann_dir / p.relative_to(img_dir).with_suffix(".png")
            if not ann.is_file():
                raise DatasetError(f"{ann}: annotation is missing for image {p}")
            self.pairs.append((p, ann))
        names = class_names or [f"class_{i + 1}" for i in range(num_classes)]
        super().__init__(Path(root), name, {}, SegInfo(list(names)))

    def __len__(self) -> int:
        return len(self.pairs)

    def records(self, masks: bool = False) -> Iterator[Record]:
        for img_path, ann_path in self.pairs:
            image = open_image(img_path)
            mask = None
            if masks:
                mask = read_index_mask(ann_path) - 1  # 0 ("other") -> IGNORE
                check_mask(mask, self.seg.num_classes, str(ann_path), image.size)
            yield Record(img_path.stem, image, mask=mask, source=str(img_path))


def ade20k_class_names(root: Path) -> Optional[list[str]]:
    """Class names from objectInfo150.csv / objectInfo150.txt when the dataset ships one."""
    for name in ("objectInfo150.csv", "objectInfo150.txt"):
        f = Path(root) / name
        if f.is_file():
            rows = [r for r in f.read_text().splitlines()[1:] if r.strip()]
            sep = "," if name.endswith(".csv") else "\t"
            return [r.split(sep)[-1].split(";")[0].strip() for r in rows]
    return None


# -- Pascal VOC -------------------------------------------------------------------------------------------------
class VOCSplit(Split):
    """VOC2012 segmentation layout; classes 0..20 (0 = background is a class), 255 = ignored boundary."""

    layout = "voc"

    def __init__(self, root: Path, name: str) -> None:
        root = Path(root)
        list_file = root / "ImageSets" / "Segmentation" / f"{name}.txt"
        if not list_file.is_file():
            raise DatasetError(f"{list_file}: split list is missing (VOC layout)")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"{list_file}: empty split (no image ids)")
        self.items = []
        for i in ids:
            img, ann = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
            if not img.is_file():
                raise DatasetError(f"{img}: image listed in {list_file} is missing")
            if not ann.is_file():
                raise DatasetError(f"{ann}: annotation is missing for image {img}")
            self.items.append((i, img, ann))
        super().__init__(root, name, {}, SegInfo(list(VOC_CLASSES)))

    def __len__(self) -> int:
        return len(self.items)

    def records(self, masks: bool = False) -> Iterator[Record]:
        for key, img_path, ann_path in self.items:
            image = open_image(img_path)
            mask = None
            if masks:
                mask = read_index_mask(ann_path)
                mask[mask == 255] = IGNORE
                check_mask(mask, self.seg.num_classes, str(ann_path), image.size)
            yield Record(key, image, mask=mask, source=str(img_path))


# -- shards -----------------------------------------------------------------------------------------------------
def read_info(root: Path, split: Optional[str] = None) -> dict[str, Any]:
    """`info.json` of a shard dataset (DIR/info.json or DIR/<split>/info.json), {} when absent."""
    for f in ([Path(root) / split / "info.json"] if split else []) + [Path(root) / "info.json"]:
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise DatasetError(f"{f}: not valid JSON ({e})") from e
    return {}


def shard_label_classes(info: dict[str, Any]) -> dict[str, list[str]]:
    """Label field -> class names: `label` (info's `classes`) and `<name>_label` for info's `label_fields`.

    Fields whose values are not class indices (synth `count`, 1..3) are left out; `shape_label` duplicates
    synth's `label` and is left out too.
    """
    classes: dict[str, list[str]] = {"label": [str(c) for c in info.get("classes", [])]}
    for k, names in info.get("label_fields", {}).items():
        if k not in ("count", "shape"):
            classes[f"{k}_label"] = [str(c) for c in names]
    return classes


class ShardSplit(Split):
    """Webdataset shards. Corrupt samples are skipped and counted (`skipped`); bad labels and masks raise."""

    layout = "shards"

    def __init__(self, shards: str, name: str, info: dict[str, Any], label_fields: Optional[tuple[str, ...]] = None):
        from radio.data.shards import resolve_shards

        try:
            self.urls = resolve_shards(shards, f"{name} split")
        except FileNotFoundError as e:
            raise DatasetError(f"{shards}: empty split ({e})") from e
        classes = shard_label_classes(info)
        if label_fields:
            classes = {f: classes.get(f, []) for f in label_fields}
        seg = None
        if info.get("seg_classes"):
            seg = SegInfo([str(c) for c in info["seg_classes"]])
        self.seg_ignore = info.get("seg_ignore_index")
        self.skipped = 0
        root = Path(shards.split("::")[0])
        super().__init__(root if root.is_dir() else root.parent, name, classes, seg)

    def records(self, masks: bool = False) -> Iterator[Record]:
        from radio.data.shards import ErrorCounter, SampleError, decode_sample, iter_raw_samples

        errors = ErrorCounter()
        count = 0
        for raw in iter_raw_samples(self.urls, handler=errors):
            where = f"shard {raw.get('__url__')} key {raw.get('__key__')}"
            if masks and "seg.png" not in raw:
                raise DatasetError(f"{where}: annotation is missing (no seg.png member)")
            try:
                s = decode_sample(raw, need_mask=masks)
            except SampleError as e:
                errors(e)
                self.skipped = errors.total
                continue
            labels = {}
            for f, names in self.classes.items():
                v = s.label if f == "label" else s.meta.get(f, -1)
                v = int(v) if isinstance(v, (int, float)) else -1
                if names and v >= len(names):
                    raise DatasetError(f"{where}: {f} {v} out of range ({len(names)} classes in info.json)")
                labels[f] = v
            mask = None
            if masks:
                if self.seg is None:
                    raise DatasetError(f"{self.root}: info.json has no 'seg_classes'; cannot score masks")
                mask = s.mask.astype(np.int64)
                if mask.ndim == 3:
                    raise DatasetError(f"{where}: seg.png must be a single-channel index PNG")
                if self.seg_ignore is not None:
                    mask[mask == int(self.seg_ignore)] = IGNORE
                check_mask(mask, self.seg.num_classes, where, s.image.size)
            count += 1
            yield Record(s.key, s.image, labels, mask, s.meta, source=where)
        if count == 0:
            raise DatasetError(f"{self.root}: empty split (no readable sample in {len(self.urls)} shard(s))")


# -- detection --------------------------------------------------------------------------------------------------
def detect_layout(root: Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {str(root)!r} is not a directory")
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return "ade20k"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    train = root / "train"
    if train.is_dir():
        if any(train.glob("*.tar")):
            return "shards"
        if any(d.is_dir() for d in train.iterdir()):
            return "imagefolder"
    raise FileNotFoundError(
        f"--data {str(root)!r}: unknown layout; expected sub-directories 'train' and 'val' (holding shards or "
        f"ImageFolder class folders), ADE20K (images/, annotations/) or VOC (JPEGImages/, SegmentationClass/, "
        f"ImageSets/)")


def open_dataset(root: str | Path, layout: Optional[str] = None, num_classes: Optional[int] = None,
                 label_fields: Optional[tuple[str, ...]] = None) -> Dataset:
    """Open the train and val splits of a dataset (see module docstring); validates structure up front."""
    root = Path(root)
    if (root / "VOCdevkit" / "VOC2012").is_dir():
        root = root / "VOCdevkit" / "VOC2012"
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if layout == "imagefolder":
        train = ImageFolderSplit(root, "train")
        val = ImageFolderSplit(root, "val", train.classes["label"])
    elif layout == "ade20k":
        names = ade20k_class_names(root)
        n = num_classes or (len(names) if names else 150)
        train, val = ADE20KSplit(root, "train", n, names), ADE20KSplit(root, "val", n, names)
    elif layout == "voc":
        train, val = VOCSplit(root, "train"), VOCSplit(root, "val")
    else:
        for s in ("train", "val"):
            if not (root / s).is_dir():
                raise FileNotFoundError(f"--data {str(root)!r}: expected sub-directories 'train' and 'val' "
                                        f"holding shards; {str(root / s)!r} is missing")
        train = ShardSplit(str(root / "train"), "train", read_info(root, "train"), label_fields)
        val = ShardSplit(str(root / "val"), "val", read_info(root, "val"), tuple(train.classes))
    return Dataset(root, layout, train, val)
