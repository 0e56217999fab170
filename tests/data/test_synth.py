import json

import numpy as np

from radio.data.shards import decode_sample, iter_raw_samples, resolve_shards
from radio.data.synth import COLOURS, POSITIONS, SHAPES, generate


def test_generation_is_deterministic_for_a_seed():
    a, b = generate(7, seed=3), generate(7, seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.meta == b.meta
    c = generate(7, seed=4)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(generate(7, seed=3, split="val").image, a.image)


def test_labels_are_consistent_with_the_pixels():
    for i in range(30):
        s = generate(i, size=96)
        m = s.meta
        assert 0 <= m["label"] < len(SHAPES) and m["shape"] == SHAPES[m["label"]]
        assert m["colour"] == list(COLOURS)[m["colour_label"]] and 1 <= m["count"] <= 3
        # mask classes are 0 (background) and 1 + colour class, nothing else
        assert set(np.unique(s.mask)) == {0, m["colour_label"] + 1}
        # object pixels carry (roughly) the named colour: its dominant channel matches
        obj = s.image[s.mask > 0].astype(float).mean(0) / 255
        ref = np.array(COLOURS[m["colour"]])
        assert np.argmax(obj) == np.argmax(ref)
        ys, xs = np.nonzero(s.mask)
        quadrant = int(ys.mean() >= 48) * 2 + int(xs.mean() >= 48)
        assert m["position"] == POSITIONS[quadrant]


def test_labels_are_varied():
    metas = [generate(i).meta for i in range(200)]
    for field, n in (("shape", len(SHAPES)), ("colour", len(COLOURS)), ("count", 3), ("texture", 4)):
        assert len({m[field] for m in metas}) == n, field


def test_shards_hold_image_json_and_mask(synth_dir):
    urls = resolve_shards(str(synth_dir / "train"))
    assert len(urls) == 2
    samples = [decode_sample(r, need_mask=True) for r in iter_raw_samples(urls)]
    assert len(samples) == 160 and len({s.key for s in samples}) == 160
    s = samples[0]
    assert s.image.size == (64, 64) and s.mask.shape == (64, 64) and s.label == s.meta["shape_label"]
    info = json.loads((synth_dir / "info.json").read_text())
    assert info["classes"] == list(SHAPES) and info["counts"] == {"train": 160, "val": 48}
