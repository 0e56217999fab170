"""Training batches from the feature cache (radio.cache): the same loss as online for the same crop, mixed
runs, and loud errors for a cache that does not fit."""
import copy
import io
import logging
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch

import teachers
from radio.cache.aligned import CropView, crop_grid
from radio.cache.checks import check_against_teachers
from radio.cache.format import CacheMismatchError
from radio.cache.reader import read_layout
from radio.cache.views import CachedTargets
from radio.cache.writer import cache_teachers
from radio.data.datamodule import ShardDataModule
from radio.data.index import ShardIndex, scan_shard
from radio.data.shards import decode_sample, iter_raw_samples, resolve_shards
from radio.data.synth import write_synth
from radio.data.transforms import eval_transform
from radio.train.module import DistillModule
from radio.train.recipe_checks import ConfigError, check_recipe
from radio.train.targets import summary_target_loss
from tests.helpers import TINY_CLIP, TINY_DINO, TINY_SAM, TINY_STUDENT, tiny_recipe

SPECS = [TINY_CLIP, TINY_DINO, TINY_SAM]


@pytest.fixture(scope="module")
def cached(synth_dir, tmp_path_factory):
    """fp16 caches of three families (CLIP 4 x 4 cells on 64 px, DINOv2 4 x 4 on 56 px, SAM 8 x 8 on its
    64 px canvas) for the 48 validation images, written for the tiny recipe's 64 px student (grid 4)."""
    out = tmp_path_factory.mktemp("cache")
    cache_teachers(copy.deepcopy(SPECS), str(synth_dir / "val"), out, (4, 4), progress=False)
    return out


def _module():
    torch.manual_seed(0)
    return DistillModule(TINY_STUDENT, copy.deepcopy(SPECS)).eval()  # eval: no random CPE windows


def _batch(synth_dir, cache_dir, **cache):
    dm = ShardDataModule(str(synth_dir / "val"), resolution=64, batch_size=16, num_workers=0,
                         cache={"dir": str(cache_dir), **cache})
    dm.setup("fit")
    torch.manual_seed(1)
    return dm, next(iter(dm.train_dataloader())).partitions[0]


def _online_reference(module, layout, part, synth_dir, flips=True):
    """The teachers run online on the same canvases, their outputs cut with the batch's views and flipped."""
    images = {s.key: s.image for s in map(decode_sample, iter_raw_samples(resolve_shards(str(synth_dir / "val"))))}
    views = [CropView(*(int(v) for v in row[:4]), bool(row[4]) and flips, bool(row[5])) for row in part.crop]
    valid = part.crop[:, 5].bool() & ~part.crop[:, 4].bool()
    ref = {}
    for name, t in layout.teachers.items():
        teacher = module.teachers[name]
        feats, summ = [], []
        for key, view in zip(part.key, views):
            out = teacher(eval_transform(t.geometry.resolution)(images[key])[None])
            feats.append(crop_grid(out.features[0], view, layout.ref, t.geometry))
            if out.summary is not None:
                summ.append(out.summary[0])
        ref[name] = CachedTargets(torch.stack(summ) if summ else None, feats, valid)
    return ref


def test_loss_from_the_cache_equals_the_online_loss_for_the_same_crop(synth_dir, cached):
    module = _module()
    dm, part = _batch(synth_dir, cached, whole_view=0.25)
    layout = dm.cache_layout
    assert layout.reference == "clip" and set(part.cached) == {"clip", "dino_v2", "sam"}
    crop = part.crop
    assert crop[:, 4].any() and (crop[:, 5] == 0).any() and (crop[:, 5] == 1).any()
    ref = _online_reference(module, layout, part, synth_dir)
    for name, c in part.cached.items():
        assert torch.equal(c.summary_valid, ref[name].summary_valid)
        for got, want in zip(c.features, ref[name].features):
            assert got.shape == want.shape
            assert ((got - want).abs() <= want.abs() * 2 ** -10 + 1e-6).all()  # float16 rounding
    with torch.no_grad():
        loss_cache, terms_cache = module.partition_losses(part.image, module.objective.targets(part))
        loss_online, terms_online = module.partition_losses(
            part.image, module.objective.targets(replace(part, cached=ref)))
        assert set(terms_cache) == set(terms_online) == {"clip/feature", "clip/summary", "dino_v2/feature",
                                                         "dino_v2/summary", "sam/feature"}
        for k in terms_cache:
            assert torch.isclose(terms_cache[k], terms_online[k], rtol=2e-3, atol=1e-5), k
        assert torch.isclose(loss_cache, loss_online, rtol=1e-3)
        # the comparison can fail: the same crops without their flips give another loss
        unflipped = _online_reference(module, layout, part, synth_dir, flips=False)
        loss_unflipped, _ = module.partition_losses(
            part.image, module.objective.targets(replace(part, cached=unflipped)))
        assert abs(float(loss_unflipped - loss_cache)) > 20 * abs(float(loss_online - loss_cache))


def test_summary_targets_only_where_the_view_is_the_whole_canvas(synth_dir, cached):
    module = _module()
    _, part = _batch(synth_dir, cached, whole_view=0.0, teachers=["clip"])
    crop = part.crop
    valid = part.cached["clip"].summary_valid
    assert torch.equal(valid, crop[:, 5].bool() & ~crop[:, 4].bool()) and not valid.all()
    tg = module.objective.targets(part)
    pred_summary = torch.randn(len(valid), 32)
    masked = 1 - torch.cosine_similarity(pred_summary[valid], tg["clip"].summary[valid], dim=-1).mean()
    got = summary_target_loss(pred_summary, tg["clip"])
    assert (got is None) if not valid.any() else torch.isclose(got, masked)
    _, approx = _batch(synth_dir, cached, whole_view=0.0, teachers=["clip"], summary="approximate")
    assert approx.cached["clip"].summary_valid.all()


def test_mixed_runs_read_some_teachers_and_run_the_others(synth_dir, cached, monkeypatch):
    module = _module()
    _, part = _batch(synth_dir, cached, teachers=["dino_v2", "sam"])
    assert set(part.cached) == {"dino_v2", "sam"}
    calls = []
    real = teachers.Teacher.forward
    monkeypatch.setattr(teachers.Teacher, "forward", lambda self, x: calls.append(self.name) or real(self, x))
    tg = module.objective.targets(part)
    assert calls == ["clip"]
    assert tg["clip"].features.shape == (16, 64, 4, 4) and tg["sam"].features.shape == (16, 32, 8, 8)
    assert tg["dino_v2"].features.shape == (16, 48, 4, 4) and tg["dino_v2"].summary_valid is not None


def _recipe(synth_dir, tmp_path, cache_dir, **cache):
    r = tiny_recipe(str(synth_dir / "val"), None, tmp_path)
    r["model"]["teachers"] = copy.deepcopy(SPECS)
    r["data"]["cache"] = {"dir": str(cache_dir), **cache}
    return r


def test_a_recipe_whose_teacher_differs_from_the_cache_fails_before_compute(synth_dir, cached, tmp_path,
                                                                            monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a teacher was built before the recipe was validated")

    monkeypatch.setattr(teachers, "build", boom)
    check_recipe(_recipe(synth_dir, tmp_path, cached))  # the cache fits its own recipe
    r = _recipe(synth_dir, tmp_path, cached)
    r["model"]["teachers"][1]["seed"] = 7
    r["model"]["teachers"][2]["arch"]["depth"] = 3
    with pytest.raises(ConfigError) as info:
        check_recipe(r)
    msg = str(info.value)
    assert f"{cached / 'dino_v2' / 'meta.json'}" in msg and "seed: cache 2 != recipe 7" in msg
    assert f"{cached / 'sam' / 'meta.json'}" in msg and "arch: cache" in msg
    r = _recipe(synth_dir, tmp_path, cached, teachers=["clip", "dino_v3"], align="sam")
    r["data"]["resolution"] = 96  # dino_v2 is dynamic: its cache was written for the 64 px student grid
    r["model"]["teachers"][1]["name"] = "dino_v3"
    r["model"]["teachers"][0]["mosaic"] = True
    with pytest.raises(ConfigError) as info:
        check_recipe(r)
    msg = str(info.value)
    assert "data.cache.align: 'sam' is not a cached teacher" in msg
    assert "model.teachers (clip): mosaic and data.cache exclude each other" in msg
    r = _recipe(synth_dir, tmp_path, cached, teachers=["dino_v2"])
    r["data"]["resolution"] = 96
    with pytest.raises(ConfigError, match=r"dino_v2/meta.json was not written for .* resolution: cache \[56, 56\] "
                                          r"!= recipe \[84, 84\]"):
        check_recipe(r)
    with pytest.raises(ConfigError, match=r"data.cache.dir: '.*nowhere' does not exist \(write it with `radio cache"):
        check_recipe(_recipe(synth_dir, tmp_path, tmp_path / "nowhere"))
    r = _recipe(synth_dir, tmp_path, cached)
    r["data"]["shards"] = str(synth_dir / "train")
    with pytest.raises(ConfigError) as info:
        check_recipe(r)
    msg = str(info.value)
    for name in ("clip", "dino_v2", "sam"):  # 000001.tar is not cached; 000000.tar is another shard of that name
        assert f"feature cache {cached / name}: no feature shard for 1 training shard(s), e.g. " in msg
        assert f"feature cache {cached / name}: 1 training shard(s) are not the ones it was written from" in msg


def test_the_module_refuses_a_cache_of_other_teachers(synth_dir, cached):
    layout = read_layout({"dir": str(cached)}, resolve_shards(str(synth_dir / "val")))
    other = copy.deepcopy(SPECS)
    other[0]["arch"]["vision_cfg"]["width"] = 32
    built = {s["name"]: teachers.build(s) for s in other[:2]}
    specs = {s["name"]: teachers.as_spec(s) for s in other[:2]}
    with pytest.raises(CacheMismatchError) as info:
        check_against_teachers(layout, built, specs, {}, (4, 4))
    msg = str(info.value)
    assert "caches 'sam', not a teacher of the model" in msg
    assert "clip/meta.json" in msg and "arch: cache" in msg and "feature_dim: cache 64 != teacher 32" in msg


def test_bad_cached_records_skip_their_samples_and_are_counted_with_shard_and_key(tmp_path, caplog):
    """A features array of the wrong shape and a feature shard cut in half: over one epoch each affected sample is
    skipped once and named; every other sample is trained on."""
    write_synth(tmp_path / "data", 24, val_count=0, size=64, shard_size=12, progress=False)
    cache_teachers([copy.deepcopy(TINY_DINO)], str(tmp_path / "data" / "train"), tmp_path / "cache", (4, 4),
                   progress=False)
    shard0, shard1 = (tmp_path / "cache" / "dino_v2" / f"00000{i}.tar" for i in (0, 1))
    with tarfile.open(shard0) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    wrong = members[10][0].name.split(".")[0]
    with tarfile.open(shard0, "w") as tar:
        for m, data in members:
            if m.name.startswith(wrong + ".") and m.name.endswith("features.npy"):
                buf = io.BytesIO()
                np.save(buf, np.zeros((48, 3, 4), np.float16))
                m.size, data = len(buf.getvalue()), buf.getvalue()
            tar.addfile(m, io.BytesIO(data))
    shard1.write_bytes(shard1.read_bytes()[: shard1.stat().st_size // 2])
    kept1 = set(scan_shard(str(shard1), ("features.npy",)).keys.tolist())
    keys1 = [k for k in ShardIndex.build(resolve_shards(str(tmp_path / "data" / "train")), progress=False).keys
             if k not in {m.name.split(".")[0] for m, _ in members}]
    assert 0 < len(kept1) < 12 == len(keys1)
    expected = {("FeatureError", str(shard0), wrong)}
    expected |= {("MissingFeatures", str(shard1), k) for k in keys1 if k not in kept1}

    dm = ShardDataModule(str(tmp_path / "data" / "train"), resolution=64, batch_size=8, num_workers=0,
                         cache={"dir": str(tmp_path / "cache")})
    dm.setup("fit")
    assert [(f.kind, f.shard) for f in dm.health.all()] == [("TruncatedShard", str(shard1))]
    with caplog.at_level(logging.WARNING, logger="radio.data"):
        batches = [dm.on_before_batch_transfer(b, 0) for _, b in zip(range(3), dm.train_dataloader())]  # 1 epoch
    logged = [r.getMessage() for r in caplog.records if "skipped bad data" in r.getMessage()]
    assert len(logged) == len(expected) + 1 and sum(f"TruncatedShard shard={shard1}:" in m for m in logged) == 1
    assert all(sum(f"{kind} shard={shard} key={key}:" in m for m in logged) == 1 for kind, shard, key in expected)
    faults = [f for b in batches for f in b.faults]
    assert {(f["kind"], f["shard"], f["key"]) for f in faults} == expected and len(faults) == len(expected)
    assert "features of shape (48, 3, 4), meta.json says (48, 4, 4)" in next(
        f["message"] for f in faults if f["kind"] == "FeatureError")
    trained = [k for b in batches for k in b.partitions[0].key]
    assert len(trained) == len(set(trained)) == 24 - len(expected)
    assert not set(trained) & {k for _, _, k in expected}
    for b in batches:
        p = b.partitions[0]
        assert p.image.shape[0] == len(p.key) == len(p.cached["dino_v2"].features) == p.crop.shape[0]


def _drop_record(shard, key) -> None:
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if not m.name.startswith(key + "."):
                tar.addfile(m, io.BytesIO(data))


def test_a_key_missing_from_an_intact_feature_shard_is_an_error_before_compute(tmp_path):
    write_synth(tmp_path / "data", 24, val_count=0, size=64, shard_size=12, progress=False)
    cache_teachers([copy.deepcopy(TINY_DINO)], str(tmp_path / "data" / "train"), tmp_path / "cache", (4, 4),
                   progress=False)
    shard = tmp_path / "cache" / "dino_v2" / "000001.tar"
    key = scan_shard(str(shard), ("features.npy",)).keys.tolist()[5]
    _drop_record(shard, key)
    dm = ShardDataModule(str(tmp_path / "data" / "train"), resolution=64, batch_size=8, num_workers=0,
                         cache={"dir": str(tmp_path / "cache")})
    with pytest.raises(CacheMismatchError, match=f"1 training sample.*'{key}' of {shard}.*rerun `radio cache`"):
        dm.setup("fit")


def test_a_key_the_cache_writer_skipped_is_bad_data_not_an_error(tmp_path):
    """An image that does not decode is skipped by `radio cache` (meta.json names it) and, in training, skipped
    and counted once like any bad image."""
    write_synth(tmp_path / "data", 24, val_count=0, size=64, shard_size=12, progress=False)
    src = tmp_path / "data" / "train" / "000000.tar"
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    broken = members[0][0].name.split(".")[0]
    with tarfile.open(src, "w") as tar:
        for m, data in members:
            if m.name.startswith(broken + ".") and m.name.endswith(".png") and not m.name.endswith(".seg.png"):
                m.size, data = 64, b"\x89PNG" + bytes(60)
            tar.addfile(m, io.BytesIO(data))
    meta = cache_teachers([copy.deepcopy(TINY_DINO)], str(tmp_path / "data" / "train"), tmp_path / "cache", (4, 4),
                          progress=False)["dino_v2"]
    assert meta["skipped_keys"] == {"000000.tar": [broken]} and meta["count"] == 23
    dm = ShardDataModule(str(tmp_path / "data" / "train"), resolution=64, batch_size=8, num_workers=0,
                         cache={"dir": str(tmp_path / "cache")})
    dm.setup("fit")
    batches = [dm.on_before_batch_transfer(b, 0) for _, b in zip(range(3), dm.train_dataloader())]  # 1 epoch
    faults = [(f["kind"], f["shard"], f["key"]) for b in batches for f in b.faults]
    assert faults == [("SampleError", str(src), broken)]  # the image is what is bad
    trained = [k for b in batches for k in b.partitions[0].key]
    assert len(trained) == len(set(trained)) == 23 and broken not in trained
