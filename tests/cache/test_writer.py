import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import teachers
from radio.cache.checks import check_cache_meta
from radio.cache.format import CacheMismatchError, decode_cached
from radio.cache.writer import cache_teacher, cache_teachers
from radio.cli.main import main
from radio.data.shards import decode_sample, iter_raw_samples, resolve_shards
from radio.data.transforms import eval_transform
from tests.helpers import TINY_DINO, TINY_SAM, tiny_recipe, write_recipe


def test_cache_command_writes_teacher_outputs_keyed_like_the_images(synth_dir, tmp_path, capsys):
    recipe = write_recipe(tiny_recipe(str(synth_dir / "val"), None, tmp_path), tmp_path / "r.yaml")
    assert main(["cache", "--config", str(recipe), "--out", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "clip: 48 images at 64x64" in out and "dino_v2: 48 images at 56x56" in out and "KiB per image" in out
    meta = json.loads((tmp_path / "cache" / "dino_v2" / "meta.json").read_text())
    assert meta["dtype"] == "float16" and meta["teacher"]["patch_size"] == 14 and meta["count"] == 48
    assert meta["bytes_per_image"] == (48 * 4 * 4 + 48) * 2
    cached = {r["__key__"]: r for r in iter_raw_samples(resolve_shards(str(tmp_path / "cache" / "dino_v2")))}
    images = [decode_sample(r) for r in iter_raw_samples(resolve_shards(str(synth_dir / "val")))]
    assert set(cached) == {s.key for s in images}
    t = teachers.build(TINY_DINO)
    s = images[3]
    ref = t(eval_transform(56)(s.image)[None])
    feats = np.load(io.BytesIO(cached[s.key]["features.npy"]))
    summ = np.load(io.BytesIO(cached[s.key]["summary.npy"]))
    assert feats.dtype == np.float16 and feats.shape == (48, 4, 4)
    assert torch.allclose(torch.from_numpy(feats.astype(np.float32)), ref.features[0], atol=2e-2, rtol=1e-2)
    assert torch.allclose(torch.from_numpy(summ.astype(np.float32)), ref.summary[0], atol=2e-2, rtol=1e-2)


def test_feature_shards_mirror_the_image_shards_and_record_their_metadata(synth_dir, tmp_path):
    meta = cache_teachers([TINY_SAM], str(synth_dir / "train"), tmp_path, (4, 4), progress=False)["sam"]
    images = resolve_shards(str(synth_dir / "train"))
    assert len(images) == 2 and sorted(meta["shards"]) == images
    for url in images:
        feature_shard = meta["shards"][url]
        assert Path(feature_shard).name == Path(url).name
        image_keys = [r["__key__"] for r in iter_raw_samples([url])]
        cached = list(iter_raw_samples([feature_shard]))
        assert [r["__key__"] for r in cached] == image_keys
        assert all("summary.npy" not in r for r in cached)  # SAM has no summary
    assert meta["resolution"] == [64, 64] and meta["patch_size"] == 8 and meta["grid"] == [8, 8]
    assert meta["features_shape"] == [32, 8, 8] and meta["summary_shape"] is None
    assert meta["spec"]["arch"] == TINY_SAM["arch"] and meta["teacher"]["model"] == "vit_b"
    assert meta["region"] == {"height": 64, "width": 64, "grid_height": 8, "grid_width": 8, "scale": 1.0}
    assert meta["count"] == 160 and meta["bytes_total"] == 160 * 32 * 8 * 8 * 2
    out = decode_cached(cached[0])
    assert out.summary is None and out.features.dtype == torch.float32 and out.features.shape == (32, 8, 8)


def test_values_beyond_float16_are_an_error_naming_shard_and_key(synth_dir, tmp_path):
    t = teachers.build(TINY_DINO)
    t.model.norm.weight.mul_(1e6)  # same class, weights that put features far beyond float16's range
    with pytest.raises(ValueError, match=r"dino_v2: features of shard .*000000.tar key\(s\) \['.+'\] are not "
                                         r"finite in float16 .*--dtype float32"):
        cache_teacher(t, str(synth_dir / "val"), tmp_path, (56, 56), progress=False)
    meta = cache_teacher(t, str(synth_dir / "val"), tmp_path, (56, 56), dtype="float32", progress=False)
    assert meta["dtype"] == "float32" and meta["count"] == 48


def test_cache_metadata_check_names_every_mismatch(synth_dir, tmp_path):
    cache_teachers([TINY_SAM], str(synth_dir / "val"), tmp_path, (4, 4), progress=False)
    assert check_cache_meta(tmp_path / "sam", TINY_SAM, (64, 64))["count"] == 48
    other = copy.deepcopy(TINY_SAM)
    other["seed"], other["arch"]["depth"] = 6, 3
    with pytest.raises(CacheMismatchError) as info:
        check_cache_meta(tmp_path / "sam", other, (128, 128))
    msg = str(info.value)
    assert str(tmp_path / "sam" / "meta.json") in msg and "teacher 'sam'" in msg
    assert "seed: cache 5 != recipe 6" in msg and "arch: cache" in msg and "resolution: cache [64, 64]" in msg
    with pytest.raises(CacheMismatchError, match=r"options: cache None != recipe \{'features': 'pre_neck'\}"):
        check_cache_meta(tmp_path / "sam", {**TINY_SAM, "options": {"features": "pre_neck"}}, (64, 64))
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        check_cache_meta(tmp_path / "clip", TINY_SAM, (64, 64))
    with pytest.raises(CacheMismatchError, match="shard s.tar key k7: no features.npy member; members: .*summary"):
        decode_cached({"__key__": "k7", "__url__": "s.tar", "summary.npy": b""})
