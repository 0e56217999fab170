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
`DatasetError` naming the file. The shared types live in eval.splits, the shard reader in eval.shard_split;
every public name is importable from here.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from eval.shard_split import ShardSplit, read_info, shard_label_classes
from eval.splits import IGNORE, Dataset, DatasetError, Record, SegInfo, Split, check_mask

__all__ = ["ADE20K_SPLITS", "ADE20KSplit", "Dataset", "DatasetError", "IGNORE", "IMAGE_SUFFIXES",
           "ImageFolderSplit", "LAYOUTS", "Record", "SegInfo", "ShardSplit", "Split", "VOC_CLASSES",
           "VOCSplit", "ade20k_class_names", "check_mask", "detect_layout", "open_dataset", "open_image",
           "read_index_mask", "read_info", "shard_label_classes"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
LAYOUTS = ("shards", "imagefolder", "ade20k", "voc")
ADE20K_SPLITS = {"train": "training", "val": "validation"}
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


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


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# -- ImageFolder ------------------------------------------------------------------------------------------------
class ImageFolderSplit(Split):
    layout = "imagefolder"

    def __init__(self, root: Path, name: str, class_names: list[str] | None = None) -> None:
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
    seg: SegInfo

    def __init__(self, root: Path, name: str, num_classes: int = 150, class_names: list[str] | None = None):
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


def ade20k_class_names(root: Path) -> list[str] | None:
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
    seg: SegInfo

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


def open_dataset(root: str | Path, layout: str | None = None, num_classes: int | None = None,
                 label_fields: tuple[str, ...] | None = None) -> Dataset:
    """Open the train and val splits of a dataset (see module docstring); validates structure up front."""
    root = Path(root)
    if (root / "VOCdevkit" / "VOC2012").is_dir():
        root = root / "VOCdevkit" / "VOC2012"
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    train: Split
    val: Split
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
