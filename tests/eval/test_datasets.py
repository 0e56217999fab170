"""The dataset layouts in miniature, read through the code users run, and malformed datasets failing clearly."""
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from eval.datasets import IGNORE, DatasetError, open_dataset
from eval.features import extract_split
from tests.eval.encoders import PaletteEncoder
from tests.eval.layouts import COLOUR_NAMES, make_ade20k, make_imagefolder, make_voc


def test_imagefolder_tree_gives_class_labels_from_folder_names(imagefolder_dir):
    ds = open_dataset(imagefolder_dir)
    assert ds.layout == "imagefolder" and ds.seg is None
    names = ds.classes["label"]
    assert names == sorted(names) and set(names) <= set(COLOUR_NAMES)
    recs = list(ds.val)
    assert len(recs) == 24
    for r in recs:  # the label indexes the folder the file sits in
        assert names[r.labels["label"]] == r.key.split("/")[1]
        assert r.image.mode == "RGB"


def test_ade20k_ignores_other_and_shifts_classes(ade_dir):
    ds = open_dataset(ade_dir, num_classes=len(COLOUR_NAMES))
    assert ds.layout == "ade20k" and ds.seg.num_classes == 6 and not ds.classes
    rec = next(ds.train.records(masks=True))
    stored = np.array(Image.open(ade_dir / "annotations" / "training" / f"ADE_{rec.key[4:]}.png"))
    assert ((rec.mask == IGNORE) == (stored == 0)).all()  # 0 ("other") is ignored
    assert (rec.mask[stored > 0] == stored[stored > 0] - 1).all()  # value c is class c - 1


def test_voc_palette_masks_keep_background_and_ignore_the_boundary(voc_dir):
    ds = open_dataset(voc_dir)
    assert ds.layout == "voc" and ds.seg.num_classes == 21 and ds.seg.classes[0] == "background"
    rec = next(ds.val.records(masks=True))
    stored = np.array(Image.open(voc_dir / "SegmentationClass" / f"{rec.key}.png"))
    assert ((rec.mask == IGNORE) == (stored == 255)).all() and (stored == 255).any()
    assert (rec.mask[stored < 255] == stored[stored < 255]).all()  # palette indices, not colours


def test_masks_follow_the_image_crop_at_the_common_mask_size(voc_dir):
    ds = open_dataset(voc_dir)
    fb = extract_split(PaletteEncoder(patch=8), ds.val, 32, dense=True, masks=True, mask_size=16, progress=False)
    assert fb.masks.shape == (24, 16, 16) and fb.dense.shape[-2:] == (4, 4)
    assert set(fb.masks.unique().tolist()) <= {IGNORE, *range(7)}
    full = extract_split(PaletteEncoder(patch=8), ds.val, 32, masks=True, limit=1, progress=False)
    assert (full.masks[0] == IGNORE).sum() > 0 and full.masks.shape == (1, 32, 32)


def test_missing_annotation_names_the_file(tmp_path):
    root = make_ade20k(tmp_path / "ade", n_train=4, n_val=2)
    victim = sorted((root / "annotations" / "validation").glob("*.png"))[1]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"{victim.name}: annotation is missing"):
        open_dataset(root, num_classes=6)
    voc = make_voc(tmp_path / "voc", n_train=4, n_val=2)
    gone = sorted((voc / "SegmentationClass").glob("*.png"))[0]
    gone.unlink()
    with pytest.raises(DatasetError, match=gone.name):
        open_dataset(voc)


def test_class_index_out_of_range_names_the_file(tmp_path):
    root = make_ade20k(tmp_path / "ade", n_train=4, n_val=2)
    ann = sorted((root / "annotations" / "training").glob("*.png"))[2]
    mask = np.array(Image.open(ann))
    mask[0, 0] = 9  # class 9 of a 6-class dataset (stored 9 -> class index 8)
    Image.fromarray(mask).save(ann)
    ds = open_dataset(root, num_classes=6)
    with pytest.raises(DatasetError, match=rf"{ann.name}: class index \[8\] out of range"):
        list(ds.train.records(masks=True))
    voc = make_voc(tmp_path / "voc", n_train=4, n_val=2)
    ann = sorted((voc / "SegmentationClass").glob("*.png"))[0]
    im = Image.open(ann)
    m = np.array(im)
    m[1, 1] = 30
    out = Image.fromarray(m, mode="P")
    out.putpalette(im.getpalette())
    out.save(ann)
    with pytest.raises(DatasetError, match=rf"{ann.name}: class index \[30\] out of range \(this dataset has 21"):
        for split in (open_dataset(voc).train, open_dataset(voc).val):
            list(split.records(masks=True))


def test_empty_splits_name_the_directory_or_list(tmp_path):
    root = make_imagefolder(tmp_path / "if", n_train=6, n_val=3)
    shutil.rmtree(root / "val")
    (root / "val" / next((root / "train").iterdir()).name).mkdir(parents=True)  # a class folder, no images
    with pytest.raises(DatasetError, match=r"val: empty split"):
        open_dataset(root)
    voc = make_voc(tmp_path / "voc", n_train=3, n_val=2)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"val.txt: empty split"):
        open_dataset(voc)


def test_imagefolder_val_class_unknown_to_train_is_rejected(tmp_path):
    root = make_imagefolder(tmp_path / "if", n_train=6, n_val=3)
    (root / "val" / "unicorn").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "unicorn" / "x.png")
    with pytest.raises(DatasetError, match=r"'unicorn'\] are not training classes"):
        open_dataset(root)


def _write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_shard_label_out_of_range_and_missing_mask_name_shard_and_key(tmp_path, synth_dir):
    for s in ("train", "val"):
        (tmp_path / s).mkdir()
        shutil.copy(next((synth_dir / s).glob("*.tar")), tmp_path / s / "000000.tar")
    info = json.loads((synth_dir / "info.json").read_text())
    (tmp_path / "info.json").write_text(json.dumps(info))
    img = np.zeros((16, 16, 3), np.uint8)
    _write_shard(tmp_path / "val" / "000001.tar", [
        ("bad-label", {"png": _png(img), "json": json.dumps({"label": 99}).encode(),
                       "seg.png": _png(np.zeros((16, 16), np.uint8))})])
    ds = open_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"000001.tar key bad-label: label 99 out of range \(6 classes"):
        list(ds.val)
    _write_shard(tmp_path / "val" / "000001.tar", [("no-mask", {"png": _png(img), "json": b'{"label": 1}'})])
    with pytest.raises(DatasetError, match=r"000001.tar key no-mask: annotation is missing"):
        list(open_dataset(tmp_path).val.records(masks=True))
    (tmp_path / "val" / "000000.tar").unlink()
    (tmp_path / "val" / "000001.tar").unlink()
    with pytest.raises(DatasetError, match=r"val.*empty split"):
        open_dataset(tmp_path)
