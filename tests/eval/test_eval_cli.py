"""`radio eval` end to end: a student and its recorded teachers side by side in one report, and clear errors."""
import json

import pytest
import torch

from eval.features import AdaptorEncoder, extract_split, load_encoder
from eval.fidelity import fidelity_sweep
from radio.cli.main import main

FAST = ["--resolution", "64", "--no-progress", "--linear-epochs", "3", "--seg-epochs", "3", "--stage2-epochs", "1",
        "--vlm-limit", "12", "--resolutions", "32,64", "--fidelity-images", "8", "--pca-images", "2", "--limit", "64"]


@pytest.fixture(scope="module")
def all_report(tiny_export, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_all")
    code = main(["eval", "all", "--model", str(tiny_export), "--with-teachers", "--data", str(synth_dir),
                 "--out", str(out), *FAST])
    assert code == 0
    return json.loads((out / "report.json").read_text()), out


def test_all_puts_student_and_teachers_side_by_side(all_report):
    report, out = all_report
    assert {m: d["kind"] for m, d in report["models"].items()} == {
        "student": "student", "clip": "teacher", "dino_v2": "teacher"}
    probes = report["probes"]
    for p in ("knn", "linear", "seg", "vlm"):
        assert set(probes[p]) == {"student", "clip", "dino_v2"}, p
    assert set(probes["zeroshot"]) == {"student", "clip"}  # DINOv2 has no text tower: skipped, with a note
    assert probes["zeroshot"]["student"]["label"]["via"] == "student:clip"
    assert set(probes["fidelity"]) == {"student"} and set(probes["fidelity"]["student"]) == {"clip", "dino_v2"}
    assert probes["fidelity"]["student"]["dino_v2"]["resolutions"] == [32, 64]
    assert any("dino_v2' has no text tower" in n for n in report["notes"])
    vlm = probes["vlm"]["student"]["qa"]
    assert {"stage1", "stage2", "majority_baseline"} <= set(vlm) and vlm["num_test"] == 4 * 12
    md = (out / "report.md").read_text()
    assert "## Student vs teachers" in md and "| knn | colour_label |" in md and "student - best teacher" in md
    for png in ("fidelity_vs_resolution", "pca_features", "linear_curves", "seg_curves", "vlm_curves"):
        assert (out / f"{png}.png").stat().st_size > 10_000 and f"({png}.png)" in md


def test_student_zeroshot_goes_through_the_clip_adaptor_and_the_teachers_text_tower(tiny_export, synth_dir,
                                                                                     all_report):
    import teachers
    from eval.datasets import open_dataset
    from eval.zeroshot import templates_named, text_classifier
    from tests.helpers import TINY_CLIP

    report, _ = all_report
    ds = open_dataset(synth_dir)
    enc = AdaptorEncoder(load_encoder(str(tiny_export)), "clip")
    fb = extract_split(enc, ds.val, 64, progress=False, limit=64)
    classifier = text_classifier(teachers.build(TINY_CLIP), ds.classes["colour_label"], templates_named("simple"))
    pred = (torch.nn.functional.normalize(fb.summary, dim=1) @ classifier).argmax(1)
    expected = float((pred == fb.labels["colour_label"]).float().mean())
    assert report["probes"]["zeroshot"]["student"]["colour_label"]["top1"] == pytest.approx(expected)


class _Spy(torch.nn.Module):
    """Records the input sizes a teacher is run at."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.sizes = teacher, []

    def resolution_for(self, grid):
        return self.teacher.resolution_for(grid)

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return self.teacher(x)


def test_fidelity_runs_dense_teachers_on_the_students_grid_and_fixed_ones_at_their_size(tiny_export, synth_dir):
    import radio
    import teachers
    from eval.datasets import open_dataset
    from tests.helpers import TINY_CLIP, TINY_DINO

    model = radio.load(tiny_export)
    spies = {"clip": _Spy(teachers.build(TINY_CLIP)), "dino_v2": _Spy(teachers.build(TINY_DINO))}
    images = [r.image for _, r in zip(range(4), open_dataset(synth_dir).val)]
    out = fidelity_sweep(model, spies, images, [32, 96], batch_size=4, progress=False)
    assert spies["dino_v2"].sizes == [(28, 28), (84, 84)]  # 2 and 6 student patches of 16 -> 14-px patches
    assert spies["clip"].sizes == [(64, 64), (64, 64)]  # CLIP-like: its fixed input size
    for r in out.values():
        assert len(r["fidelity"]) == 2 and all(f > 0 for f in r["fidelity"])
    with pytest.raises(ValueError, match="not positive multiples"):
        fidelity_sweep(model, spies, images, [40], progress=False)


def test_malformed_data_is_a_clear_cli_error(tmp_path, tiny_export, capsys):
    from tests.eval.layouts import make_ade20k

    root = make_ade20k(tmp_path / "ade", n_train=3, n_val=2)
    victim = sorted((root / "annotations" / "training").glob("*.png"))[0]
    victim.unlink()
    code = main(["eval", "seg", "--model", str(tiny_export), "--data", str(root), "--out", str(tmp_path / "o")])
    assert code == 2 and f"{victim}: annotation is missing" in capsys.readouterr().err
    make_ade20k(tmp_path / "ade2", n_train=3, n_val=2)
    code = main(["eval", "knn", "--model", str(tiny_export), "--data", str(tmp_path / "ade2"),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "has no image-level labels" in capsys.readouterr().err


def test_unknown_recorded_teacher_is_a_clear_cli_error(tiny_export, synth_dir, tmp_path, capsys):
    code = main(["eval", "knn", "--model", f"{tiny_export}::sam", "--data", str(synth_dir), "--out", str(tmp_path)])
    assert code == 2 and "no recorded teacher 'sam'; recorded: clip, dino_v2" in capsys.readouterr().err


@pytest.mark.parametrize("probe", ["knn", "linear", "seg", "zeroshot", "fidelity", "vlm", "all"])
def test_every_probe_has_help_with_repeatable_model(probe, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", probe, "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and f"usage: radio eval {probe}" in text and "repeat" in " ".join(text.split())
