"""Random access to shard samples: the same samples as webdataset's reader, faults found by the header scan, and
a scan cache."""
import io
import tarfile

import pytest
import webdataset as wds

import radio.data.index as index_mod
from radio.data.index import ShardIndex, scan_shard, split_name


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_reads_the_samples_webdataset_reads(synth_dir):
    urls = sorted(str(p) for p in (synth_dir / "train").glob("*.tar"))
    idx = ShardIndex.build(urls, progress=False)
    ref = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    assert len(idx) == len(ref) == 160 and idx.counts() == [80, 80] and not idx.faults
    assert idx.keys.tolist() == [r["__key__"] for r in ref]
    for i in (0, 1, 79, 80, 159):
        raw = idx.read(i)
        assert raw["__key__"] == ref[i]["__key__"] and raw["__url__"] == ref[i]["__url__"]
        assert {k: v for k, v in raw.items() if not k.startswith("__")} == \
            {k: v for k, v in ref[i].items() if not k.startswith("__")}


def test_scan_names_each_fault(tmp_path):
    png = b"\x89PNG fake"
    good = [("a/0001.png", png), ("a/0001.json", b"{}"), ("a/0002.json", b"{}"), ("README", b"x"),
            ("a/0003.seg.png", png), ("a/0003.jpg", png)]
    scan = scan_shard(str(_tar(tmp_path / "s.tar", good)))
    assert scan.keys.tolist() == ["a/0001", "a/0003"]
    assert sorted((f.kind, f.key) for f in scan.faults) == [("MissingImage", "a/0002"), ("StrayMember", "README")]
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1700])
    cut = scan_shard(str(tmp_path / "cut.tar"))
    assert [f.kind for f in cut.faults] == ["TruncatedShard"] and len(cut.starts) == 0
    broken = bytearray(data)
    broken[2048 + 100:2048 + 160] = b"\xff" * 60  # garbage in the third member's header
    (tmp_path / "broken.tar").write_bytes(bytes(broken))
    assert "CorruptShard" in [f.kind for f in scan_shard(str(tmp_path / "broken.tar")).faults]
    (tmp_path / "junk.tar").write_bytes(b"definitely not a tar" * 40)
    assert [f.kind for f in scan_shard(str(tmp_path / "junk.tar")).faults] == ["CorruptShard"]
    assert split_name("d/x.seg.PNG") == ("d/x", "seg.png") and split_name("noext") == (None, None)


def test_scan_cache_is_used_and_keyed_by_the_file(synth_dir, tmp_path, monkeypatch):
    urls = sorted(str(p) for p in (synth_dir / "train").glob("*.tar"))
    first = ShardIndex.build(urls, cache_dir=str(tmp_path / "cache"), progress=False)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2

    def no_scan(url, *args):
        raise AssertionError("scanned again")

    monkeypatch.setattr(index_mod, "scan_shard", no_scan)
    again = ShardIndex.build(urls, cache_dir=str(tmp_path / "cache"), progress=False)
    assert again.digest() == first.digest() and (again.start == first.start).all() and (again.keys == first.keys).all()
    copy = tmp_path / "000000.tar"
    copy.write_bytes(open(urls[0], "rb").read())
    with pytest.raises(AssertionError, match="scanned again"):  # another file: not in the cache
        ShardIndex.build([str(copy)], cache_dir=str(tmp_path / "cache"), progress=False)
