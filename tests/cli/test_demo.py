import json

import pytest

from radio.cli.demo import run_demo


@pytest.mark.slow
def test_demo_produces_a_report_with_knn_for_student_and_each_teacher(tmp_path):
    md = run_demo(tmp_path / "demo", count=96, steps=12, progress=False)
    assert md == tmp_path / "demo" / "report.md" and md.is_file()
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    knn = report["probes"]["knn"]
    assert set(knn) == {"student", "clip", "dino_v2", "sam"}
    for per_field in knn.values():
        assert 0.0 <= per_field["label"]["top1"] <= 1.0 and per_field["label"]["k"] == 20
    train_loss = report["training"]["metrics"]["train/loss"]
    assert train_loss["last"] < train_loss["first"]
    assert (tmp_path / "demo" / "loss_curve.png").stat().st_size > 10_000
    text = md.read_text()
    assert "| student |" in text and "| clip |" in text and "| dino_v2 |" in text and "| sam |" in text
    assert "loss_curve.png" in text
    assert (tmp_path / "demo" / "student" / "model.safetensors").is_file()
    # fidelity vs resolution, measured during training, is in the report and rises
    fid = report["training_fidelity"]
    assert [r["step"] for r in fid] == [4, 8, 12]
    for name in ("clip", "dino_v2", "sam"):
        first, last = fid[0]["teachers"][name], fid[-1]["teachers"][name]
        assert len(last) >= 2 and all(v["fidelity"] > 0 for v in last.values())
        assert max(v["fidelity"] for v in last.values()) > max(v["fidelity"] for v in first.values())
    assert "## Fidelity vs resolution" in text and (tmp_path / "demo" / "fidelity.png").stat().st_size > 10_000
    # the markdown's training table keeps the headline terms; the per-resolution copies stay in report.json
    table = text.split("## Training", 1)[1].split("\n## ", 1)[0]
    assert "| train/loss |" in table and "@" not in table.replace("`NAME@RES`", "")
    assert any("@" in k for k in report["training"]["metrics"])
