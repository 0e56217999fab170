"""Decompression bombs: images whose header declares more pixels than `data.max_image_pixels` are bad data,
skipped and counted wherever shard images are decoded, and never decoded."""
import io
import json
import logging
import struct
import tarfile
import zlib

import pytest
from PIL import Image, ImageFile

import teachers
from radio.cache.writer import cache_teacher
from radio.data.datamodule import ShardDataModule
from radio.data.shards import (
    MAX_IMAGE_PIXELS,
    OversizedImage,
    SampleError,
    decode_sample,
    open_image,
    pack_folder,
)
from tests.helpers import TINY_DINO

LIMIT, BIG = 10_000, 200  # a 200 x 200 image (40,000 pixels) is over a 10,000-pixel limit


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (side % 256, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _crafted_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (1-bit grey) over a tiny, truncated pixel stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)  # far fewer than the header declares
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture
def loads(monkeypatch):
    """The sizes of the images PIL decodes (ImageFile.load is where pixel data is decompressed)."""
    seen = []
    original = ImageFile.ImageFile.load

    def load(self):
        seen.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


def _shard(path, big_key="s002", count=6):
    """`count` samples of 32 x 32 px, except `big_key`, 200 x 200 px."""
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            key = f"s{i:03d}"
            for name, data in ((f"{key}.png", _png(BIG if key == big_key else 32)),
                               (f"{key}.json", json.dumps({"label": i}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_the_default_limit_is_pils_warning_threshold():
    assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_a_crafted_bomb_header_is_refused_without_decoding(side, loads):
    """10000^2 px is over the default limit but under PIL's own hard limit (twice its threshold; PIL only
    warns): the header check stops it; 20000^2 px PIL refuses itself (DecompressionBombError). Either way:
    OversizedImage."""
    data = _crafted_png(side, side)
    assert len(data) < 200
    with pytest.raises(OversizedImage) as e:
        decode_sample({"__key__": "bomb", "__url__": "s.tar", "png": data})
    assert isinstance(e.value, SampleError) and e.value.radio_kind == "OversizedImage"
    assert e.value.radio_where == "shard=s.tar key=bomb" and "max_image_pixels" in str(e.value)
    if side == 10_000:
        assert "10000x10000 = 100,000,000 pixels" in str(e.value)
    else:
        assert "refused by PIL" in str(e.value)
    assert loads == []  # nothing was decoded


def test_a_limit_above_pils_threshold_is_honoured_up_to_pils_hard_limit(loads):
    """A header of 10000 x 10000 px passes a limit of 2e8 px (PIL's warning is not an error then) and fails as an
    undecodable image (its pixel stream is truncated), not as an oversized one."""
    with pytest.raises(SampleError) as e:
        decode_sample({"__key__": "k", "__url__": "s.tar", "png": _crafted_png(10_000, 10_000)},
                      max_pixels=200_000_000)
    assert not isinstance(e.value, OversizedImage) and "cannot decode png" in str(e.value)
    assert loads == [(10_000, 10_000)]


def test_images_at_the_limit_decode_and_masks_are_checked_too(loads):
    assert open_image(_png(100), max_pixels=LIMIT).size == (100, 100)  # exactly 10,000 pixels
    raw = {"__key__": "k", "__url__": "s.tar", "png": _png(32), "seg.png": _png(BIG)}
    with pytest.raises(OversizedImage, match="seg.png"):
        decode_sample(raw, need_mask=True, max_pixels=LIMIT)
    assert (BIG, BIG) not in loads


def test_training_and_validation_skip_and_count_oversized_images(tmp_path, loads, caplog):
    shard = _shard(tmp_path / "000000.tar")
    dm = ShardDataModule(str(tmp_path), str(tmp_path), resolution=32, batch_size=6, val_batch_size=8,
                         num_workers=0, max_bad_fraction=0.5, max_image_pixels=LIMIT)
    dm.setup("fit")
    stream = dm.train_dataloader().dataset
    batch = stream.batch(0)  # one epoch: every sample once
    assert batch.reads == 6
    assert batch.faults == [{"kind": "OversizedImage", "shard": str(shard), "key": "s002",
                             "message": batch.faults[0]["message"]}]
    assert "200x200 = 40,000 pixels" in batch.faults[0]["message"]
    assert sorted(batch.partitions[0].key) == ["s000", "s001", "s003", "s004", "s005"]
    with caplog.at_level(logging.WARNING, logger="radio.data"):
        dm.on_before_batch_transfer(batch, 0)
    assert dm.health.by_kind() == {"OversizedImage": 1}
    assert any("OversizedImage" in r.getMessage() and "key=s002" in r.getMessage() for r in caplog.records)
    val_keys = [k for b in dm.val_dataloader() for k in b.key]
    assert sorted(val_keys) == ["s000", "s001", "s003", "s004", "s005"]
    assert dict(dm.errors.counts) == {"OversizedImage": 1}
    assert (BIG, BIG) not in loads and loads  # the others were decoded, the big one never


def test_the_feature_cache_skips_and_lists_oversized_images(tmp_path, loads):
    _shard(tmp_path / "000000.tar", count=3)
    meta = cache_teacher(teachers.build(TINY_DINO), str(tmp_path / "000000.tar"), tmp_path / "cache", (28, 28),
                         progress=False, max_image_pixels=LIMIT)
    assert meta["count"] == 2 and meta["skipped"] == 1
    assert meta["skipped_keys"] == {"000000.tar": ["s002"]} and "OversizedImage" in meta["skipped_examples"][0]
    assert (BIG, BIG) not in loads


def test_pack_skips_oversized_images(tmp_path, loads):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.png").write_bytes(_png(32))
    (src / "big.png").write_bytes(_png(BIG))
    info = pack_folder(src, tmp_path / "out", progress=False, max_pixels=LIMIT)
    assert info["count"] == 1 and info["skipped"] == 1 and "OversizedImage" in info["skipped_files"][0]
    assert (BIG, BIG) not in loads
