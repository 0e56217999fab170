"""An export's config.json is a file the user did not write: the teacher specs in its provenance never run code.
`radio eval --with-teachers` and `EXPORT_DIR::NAME` refuse a recorded spec with `trust_remote_code: true` before
any model loads (naming the file and the key), build the others with remote code off, and --with-teachers prints
every teacher it adds."""
import json
import shutil

import pytest

import teachers
from eval.features import ModelSpecError, load_encoder
from radio.cli.main import main
from radio.export import config_sha256
from tests.remote_code import isolate_hf_modules, remote_spec, write_remote_model

FAST = ["--resolution", "64", "--no-progress", "--limit", "16", "--pca-images", "0"]


def _with_recorded(tiny_export, out, spec):
    """A copy of the tiny export whose provenance also records `spec` (as teacher_specs[2]), with a matching
    config checksum."""
    shutil.copytree(tiny_export, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["provenance"]["teacher_specs"].append(spec)
    cfg["config_sha256"] = config_sha256(cfg)  # as an attacker would: the checksum guards against corruption only
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture
def remote(tmp_path, monkeypatch):
    isolate_hf_modules(monkeypatch, tmp_path)
    marker = tmp_path / "PWNED"
    return write_remote_model(tmp_path / "remote", marker), marker


@pytest.mark.parametrize("how", ["--with-teachers", "EXPORT::hf"])
def test_a_recorded_trust_remote_code_is_refused_and_runs_nothing(tiny_export, synth_dir, tmp_path, remote,
                                                                  capsys, how):
    directory, marker = remote
    export = _with_recorded(tiny_export, tmp_path / "student", remote_spec(directory, trust=True))
    model = [str(export), "--with-teachers"] if how == "--with-teachers" else [f"{export}::hf"]
    code = main(["eval", "knn", "--model", *model, "--data", str(synth_dir), "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{export}/config.json: provenance.teacher_specs[2]: teacher 'hf' sets options.trust_remote_code: True" \
        in err
    assert not marker.exists() and not (tmp_path / "o" / "report.json").exists()


def test_a_recorded_spec_is_built_with_remote_code_off(tiny_export, tmp_path, remote):
    directory, marker = remote
    spec = remote_spec(directory, trust=False)
    del spec["options"]
    export = _with_recorded(tiny_export, tmp_path / "student", spec)
    with pytest.raises(teachers.TeacherWeightsError, match="contains custom code"):
        load_encoder(f"{export}::hf")
    student = load_encoder(str(export))
    assert student.recorded_teacher("hf").options == {"trust_remote_code": False}
    assert not marker.exists()


def test_a_students_recorded_teachers_are_checked_one_by_one(tiny_export, tmp_path, remote):
    directory, marker = remote
    export = _with_recorded(tiny_export, tmp_path / "student", remote_spec(directory, trust=True))
    student = load_encoder(str(export))  # what the zeroshot and fidelity probes build their teachers from
    with pytest.raises(ModelSpecError, match=r"provenance.teacher_specs\[2\]: teacher 'hf' sets options"):
        student.recorded_teacher("hf")
    assert student.recorded_teacher("clip").name == "clip"  # a refused sibling does not block the others
    assert not marker.exists()


def test_with_teachers_prints_every_teacher_it_builds(tiny_export, synth_dir, tmp_path, capsys):
    code = main(["eval", "knn", "--model", str(tiny_export), "--with-teachers", "--data", str(synth_dir),
                 "--out", str(tmp_path), *FAST])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("--with-teachers: ")]
    assert len(lines) == 2
    for line, name in zip(lines, ("clip", "dino_v2"), strict=True):
        assert line.startswith(f"--with-teachers: {tiny_export}::{name} builds {{\"name\": \"{name}\"")
        assert line.endswith(f"(recorded in {tiny_export}/config.json)")
    assert set(json.loads((tmp_path / "report.json").read_text())["models"]) == {"student", "clip", "dino_v2"}
