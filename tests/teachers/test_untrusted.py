"""Teacher specs read from files the user did not write never run code: `teachers.untrusted_spec` refuses a
code-running option (hf trust_remote_code) naming the file and the key, and pins it off otherwise; the user's own
spec with `trust_remote_code: true` still runs the model's own code."""
import pytest
import torch

import teachers
from tests.helpers import TINY_DINO, TINY_HF
from tests.remote_code import isolate_hf_modules, remote_spec, write_remote_model


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """(model directory shipping its own code, the marker file its import creates)."""
    isolate_hf_modules(monkeypatch, tmp_path)
    marker = tmp_path / "PWNED"
    return write_remote_model(tmp_path / "remote", marker), marker


def test_the_users_own_trust_remote_code_runs_the_models_code(remote):
    directory, marker = remote
    t = teachers.build(remote_spec(directory, trust=True))
    assert marker.exists() and type(t.model).__name__ == "RemoteModel"
    assert t(torch.rand(1, 3, 32, 32)).features.shape == (1, 32, 4, 4)


@pytest.mark.parametrize("value", [True, "false", 1, "yes"])
def test_a_file_spec_turning_on_remote_code_is_refused_naming_the_file_and_the_key(remote, value):
    directory, marker = remote
    spec = {**remote_spec(directory), "options": {"trust_remote_code": value}}
    with pytest.raises(teachers.UntrustedSpecError) as e:
        teachers.untrusted_spec(spec, "runs/x/student/config.json: provenance.teacher_specs[2]")
    msg = str(e.value)
    assert msg.startswith("runs/x/student/config.json: provenance.teacher_specs[2]: teacher 'hf' sets ")
    assert f"options.trust_remote_code: {value!r}" in msg and str(directory) in msg
    assert not marker.exists()


def test_a_file_spec_without_the_option_runs_no_code_of_a_model_that_ships_some(remote):
    directory, marker = remote
    for options in (None, {}, {"trust_remote_code": False}):
        spec = teachers.untrusted_spec({**remote_spec(directory), "options": options}, "ckpt")
        assert spec.options == {"trust_remote_code": False}
        with pytest.raises(teachers.TeacherWeightsError, match="contains custom code"):
            teachers.build(spec)
    assert not marker.exists()


def test_untrusted_spec_leaves_families_without_code_running_options_as_they_are():
    assert teachers.untrusted_spec(TINY_DINO, "f") == teachers.as_spec(TINY_DINO)
    spec = teachers.untrusted_spec({**TINY_HF, "options": {"dynamic_resolution": True}}, "f")
    assert spec.options == {"dynamic_resolution": True, "trust_remote_code": False}
    assert teachers.CODE_RUNNING_OPTIONS["hf"] == ("trust_remote_code",)
    assert set(teachers.CODE_RUNNING_OPTIONS) == set(teachers.available())


@pytest.mark.parametrize("spec, error", [
    ({"name": "hf", "evil": 1}, r"unknown key\(s\) \['evil'\]"),
    ({"name": "hf", "options": ["trust_remote_code"]}, r"options: must be a mapping or null, got \['"),
    ({"name": ["hf"]}, r"name: must be a string, got \['hf'\]"),
    ({"name": "hf", "seed": "0"}, "seed: must be an integer, got '0'"),
    (3, "teacher config must be a name, dict or TeacherSpec"),
])
def test_untrusted_spec_refuses_malformed_specs_naming_the_file(spec, error):
    with pytest.raises(teachers.UntrustedSpecError, match=r"^export/config.json: .*" + error):
        teachers.untrusted_spec(spec, "export/config.json")
