"""Hugging Face export: `AutoModel.from_pretrained` through the Auto classes `import radio` registers."""
import json
import pickle
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

import radio
from radio.export import ExportError, export_checkpoint, file_sha256
from radio.export.hf import RADIOStudentModel
from tests.helpers import NAMES, assert_same_outputs, reference_model


@pytest.fixture(scope="module")
def hf_dir(fit_checkpoint, tmp_path_factory):
    return export_checkpoint(fit_checkpoint, tmp_path_factory.mktemp("hf") / "student", fmt="hf")


def test_hf_round_trip_is_bit_identical(fit_checkpoint, hf_dir, tmp_path):
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["model_type"] == "radio_student" and cfg["weights_sha256"] == file_sha256(hf_dir / "model.safetensors")
    ref = reference_model(fit_checkpoint)
    model = AutoModel.from_pretrained(hf_dir)  # no trust_remote_code
    assert isinstance(model, RADIOStudentModel) and not model.training
    # every buffer, including the non-persistent ones transformers leaves uninitialised, matches the trained model
    ref_buffers = dict(ref.named_buffers())
    assert ref_buffers.keys() == dict(model.model.named_buffers()).keys()
    assert all(torch.equal(ref_buffers[k], v) for k, v in model.model.named_buffers())
    x = torch.rand(2, 3, 64, 80)
    assert_same_outputs(ref, model, x)
    assert_same_outputs(ref, radio.load(hf_dir), x)  # radio.load reads the HF layout too
    backbone = timm.create_model("radio_student", pretrained=True, pretrained_cfg_overlay={"file": str(hf_dir)})
    with torch.no_grad():
        tokens = ref.forward_tokens(x)
        summary, patches = backbone.eval().split_tokens(backbone.forward_features(
            (x - ref.input_mean) / ref.input_std))
    assert torch.equal(summary, tokens.summary) and torch.equal(patches, tokens.patches)
    model.save_pretrained(tmp_path / "again")
    assert_same_outputs(ref, AutoModel.from_pretrained(tmp_path / "again"), x, adaptors=NAMES)
    with torch.no_grad():
        a, b = ref.forward_intermediates(x, indices=2), model.forward_intermediates(x, indices=2)
    assert all(torch.equal(p.features, q.features) for p, q in zip(a.intermediates, b.intermediates))


def test_hf_config_is_registered_with_auto_classes():
    config = AutoConfig.for_model("radio_student")
    assert type(config).__module__ == "radio.export.hf"


def test_import_radio_registers_the_auto_classes_when_transformers_is_imported():
    # In a fresh interpreter: radio first; radio.load never imports transformers; its import registers.
    # (transformers imported before radio: the hook registers at once, tests/test_import_hooks.py.)
    code = ("import sys, radio; radio.load; assert 'transformers' not in sys.modules\n"
            "from transformers import AutoConfig\n"
            "from transformers.models.auto.modeling_auto import MODEL_MAPPING\n"
            "c = AutoConfig.for_model('radio_student'); print(type(c).__module__, MODEL_MAPPING[type(c)].__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["radio.export.hf", "RADIOStudentModel"]


def test_hf_loading_never_unpickles(hf_dir, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an export was unpickled")

    for mod, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(mod, name, refuse)
    AutoModel.from_pretrained(hf_dir)
    monkeypatch.undo()
    with pytest.raises(ExportError, match="pickled weights are never loaded"):
        AutoModel.from_pretrained(hf_dir, use_safetensors=False)


def test_hf_errors_are_clear(hf_dir, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(hf_dir, d)
    state = load_file(str(d / "model.safetensors"))
    key = "model.adaptors.dino_v2.summary.fc_in.bias"
    save_file({k: v for k, v in state.items() if k != key}, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match="its sha256 does not match"):
        AutoModel.from_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["weights_sha256"] = file_sha256(d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(cfg))
    for loader in (AutoModel.from_pretrained, radio.load):  # the file's header, before transformers reads it
        with pytest.raises(ExportError, match=f"missing keys \\['{key[len('model.'):]}'\\]"):
            loader(d)
    cfg["radio_config"]["format_version"] += 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="is newer than this radio supports"):
        radio.load(d)
    with pytest.raises(ExportError, match="is newer than this radio supports"):
        AutoModel.from_pretrained(d)


def test_eval_resolves_the_teachers_recorded_in_an_hf_export(fit_checkpoint, hf_dir):
    from eval.features import load_encoder, recorded_teacher

    native = export_checkpoint(fit_checkpoint, hf_dir.parent / "native")
    for name in NAMES:
        assert recorded_teacher(hf_dir, name) == recorded_teacher(native, name)
    enc = load_encoder(f"{hf_dir}::{NAMES[0]}")
    assert enc.name == NAMES[0] and enc.kind == "teacher"


def test_hf_loading_checks_dtypes_checksums_and_ignores_an_edited_dtype(tmp_path):
    import warnings

    from radio.export import UnverifiedExportWarning, export_model
    from tests.helpers import tiny_student

    d = export_model(tiny_student(), tmp_path / "hf", "hf")
    cfg = json.loads((d / "config.json").read_text())
    cfg["dtype"] = "bfloat16"  # transformers would build the model in it; no checksum covers this key
    (d / "config.json").write_text(json.dumps(cfg))
    assert {v.dtype for v in AutoModel.from_pretrained(d).state_dict().values()} == {
        v.dtype for v in radio.load(d).state_dict().values()} == {torch.float32, torch.float64, torch.bool}
    state = load_file(str(d / "model.safetensors"))
    key = "model.backbone.blocks.0.mlp.fc1.weight"
    save_file({**state, key: state[key].half()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg["weights_sha256"] = file_sha256(d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(cfg))
    for loader in (AutoModel.from_pretrained, radio.load):
        with pytest.raises(ExportError, match=rf"dtype mismatches \['{key[len('model.'):]}: torch.float16 vs"):
            loader(d)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    del cfg["weights_sha256"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UnverifiedExportWarning, match="has no weights_sha256: the export is unverified"):
        AutoModel.from_pretrained(d)
    with pytest.raises(ExportError, match="has no weights_sha256"):
        AutoModel.from_pretrained(d, verify=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedExportWarning)
        AutoModel.from_pretrained(d, verify=False)
