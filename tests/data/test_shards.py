import io
import json
import tarfile

import pytest
from PIL import Image

from radio.data.shards import (
    ErrorCounter,
    SampleError,
    decode_sample,
    iter_raw_samples,
    pack_folder,
    resolve_shards,
)


def _png(color, size=(20, 16)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_resolve_shards_patterns(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:06d}.tar").write_bytes(b"")
    assert len(resolve_shards(str(tmp_path / "{000000..000002}.tar"))) == 3
    assert len(resolve_shards(str(tmp_path / "*.tar"))) == 3
    assert len(resolve_shards(str(tmp_path))) == 3
    assert len(resolve_shards(f"{tmp_path}/000000.tar::{tmp_path}/000001.tar")) == 2


def test_resolve_shards_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.shards: shard pattern .*nothing.*matches no file"):
        resolve_shards(str(tmp_path / "nothing-*.tar"), "data.shards")
    with pytest.raises(FileNotFoundError, match="000001.tar"):
        (tmp_path / "000000.tar").write_bytes(b"")
        resolve_shards(str(tmp_path / "{000000..000005}.tar"))
    with pytest.raises(FileNotFoundError, match="holds no .tar shard"):
        (tmp_path / "empty").mkdir()
        resolve_shards(str(tmp_path / "empty"))


def test_pack_imagefolder_tree_with_a_corrupt_file(tmp_path):
    src = tmp_path / "src"
    for cls, color in (("cat", "red"), ("dog", "blue")):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            (src / cls / f"{i}.png").write_bytes(_png(color))
    (src / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    info = pack_folder(src, tmp_path / "out", progress=False)
    assert info["classes"] == ["cat", "dog"] and info["count"] == 6 and info["skipped"] == 1
    assert "broken.jpg" in info["skipped_files"][0]
    samples = [decode_sample(r) for r in iter_raw_samples(resolve_shards(str(tmp_path / "out")))]
    labels = {s.meta["path"]: s.label for s in samples}
    assert labels["cat/0.png"] == 0 and labels["dog/2.png"] == 1
    red = next(s for s in samples if s.label == 0).image.getpixel((0, 0))
    assert red == (255, 0, 0)


def test_pack_flat_folder_has_no_labels(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(_png("green"))
    info = pack_folder(tmp_path / "src", tmp_path / "out", progress=False)
    assert info["classes"] == [] and info["count"] == 1
    s = decode_sample(next(iter(iter_raw_samples(resolve_shards(str(tmp_path / "out"))))))
    assert s.label == -1


def test_pack_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        pack_folder(tmp_path / "nope", tmp_path / "out")


def test_decode_errors_name_shard_and_key():
    with pytest.raises(SampleError, match="no image member") as e:
        decode_sample({"__key__": "k1", "__url__": "s.tar", "json": b"{}"})
    assert "shard=s.tar key=k1" in e.value.radio_where
    with pytest.raises(SampleError, match="cannot decode png"):
        decode_sample({"__key__": "k2", "__url__": "s.tar", "png": b"garbage"})


def test_error_counter_counts_and_continues(tmp_path):
    path = tmp_path / "000000.tar"
    with tarfile.open(path, "w") as tar:
        for key, data in (("a", _png("red")), ("b", b"garbage"), ("c", _png("blue"))):
            for name, payload in ((f"{key}.png", data), (f"{key}.json", json.dumps({"label": 1}).encode())):
                ti = tarfile.TarInfo(name)
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))
    counter = ErrorCounter()
    good = []
    for raw in iter_raw_samples([str(path)], handler=counter):
        try:
            good.append(decode_sample(raw).key)
        except SampleError as e:
            counter(e)
    assert good == ["a", "c"] and counter.total == 1 and "key=b" in counter.examples[0]
