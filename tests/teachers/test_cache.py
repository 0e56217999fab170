import io
import json

import numpy as np
import torch

import teachers
from radio.cli.main import main
from radio.data.shards import decode_sample, iter_raw_samples, resolve_shards
from radio.data.transforms import eval_transform
from tests.helpers import TINY_DINO, tiny_recipe, write_recipe


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
