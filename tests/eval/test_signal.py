"""On generated data every probe finds real signal for features that carry the labels, and none in noise.

The label-carrying encoder is a test-only construction (tests/eval/encoders.py), never a teacher; one real library
model (a tiny random timm DINOv2, the demo's kind of teacher) is checked on the dense colour masks, where DESIGN.md
section 5 says random teachers do carry information.
"""
import json

import pytest

from eval.run import EvalOptions, run_eval
from tests.eval.encoders import NoiseEncoder, PaletteEncoder
from tests.helpers import TINY_DINO

FAST = dict(resolution=64, progress=False, linear_epochs=15, linear_lrs=(1e-2, 1e-1), seg_epochs=15,
            seg_lrs=(1e-1,), pca_images=2)


@pytest.fixture(scope="module")
def synth_report(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("signal")
    dino8 = dict(TINY_DINO, arch=dict(TINY_DINO["arch"], patch_size=8))
    report = run_eval(["knn", "linear", "seg"], [dino8], str(synth_dir), out, EvalOptions(**FAST),
                      encoders=[PaletteEncoder(patch=8), NoiseEncoder(patch=8)])
    return report, out


def test_knn_and_linear_find_colour_and_position_well_above_chance(synth_report):
    report, _ = synth_report
    for probe in ("knn", "linear"):
        good = report["probes"][probe]["palette-test-encoder"]
        noise = report["probes"][probe]["noise-test-encoder"]
        for field in ("colour_label", "position_label"):
            assert good[field]["top1"] > good[field]["chance"] + 0.4, (probe, field, good[field]["top1"])
        assert good["colour_label"]["top1"] > noise["colour_label"]["top1"] + 0.4, probe


def test_seg_finds_colour_masks_for_palette_features_and_a_random_dinov2(synth_report):
    report, out = synth_report
    seg = report["probes"]["seg"]
    base = seg["noise-test-encoder"]["masks"]["majority_miou"]
    assert seg["palette-test-encoder"]["masks"]["miou"] > base + 0.4
    assert seg["dino_v2"]["masks"]["miou"] > base + 0.15  # random teachers: colour is local and dense
    assert seg["noise-test-encoder"]["masks"]["miou"] < base + 0.05
    assert json.loads((out / "report.json").read_text())["probes"]["seg"].keys() == seg.keys()
    for png in ("linear_curves.png", "seg_curves.png", "pca_features.png"):
        assert (out / png).stat().st_size > 10_000


@pytest.mark.parametrize("layout", ["imagefolder", "ade20k", "voc"])
def test_each_layout_runs_through_run_eval_and_finds_signal(layout, request, tmp_path):
    root = request.getfixturevalue({"imagefolder": "imagefolder_dir", "ade20k": "ade_dir", "voc": "voc_dir"}[layout])
    extra = {"resolution": 32, "seg_epochs": 30, "num_classes": 6 if layout == "ade20k" else None}
    opts = EvalOptions(**(FAST | extra))
    probes = ["linear"] if layout == "imagefolder" else ["seg"]
    report = run_eval(probes, [], str(root), tmp_path, opts, encoders=[PaletteEncoder(patch=8)])
    assert report["data"]["layout"] == layout
    r = report["probes"][probes[0]]["palette-test-encoder"]
    if layout == "imagefolder":  # folders are colour classes
        assert r["label"]["top1"] > r["label"]["chance"] + 0.4
    else:
        assert r["masks"]["miou"] > r["masks"]["majority_miou"] + 0.3
    assert "## " in (tmp_path / "report.md").read_text()

