"""Native export (`radio export --format safetensors`), `radio.load`, timm loading, errors and the model card."""
import json
import os
import pickle
import shutil
import warnings

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import radio
from radio.cli.main import main
from radio.export import (
    ExportError,
    UnverifiedExportWarning,
    config_sha256,
    export_checkpoint,
    file_sha256,
    load,
    read_checkpoint,
    save_model,
    verification,
)
from radio.model.radio_model import FORMAT_VERSION, nearest_valid_sizes
from radio.types import StudentOutput
from tests.helpers import NAMES, assert_same_outputs, reference_model, tiny_student


@pytest.fixture(scope="module")
def native(fit_checkpoint, tmp_path_factory):
    return export_checkpoint(fit_checkpoint, tmp_path_factory.mktemp("native") / "student")


def test_checkpoint_export_load_bit_identical(fit_checkpoint, native):
    ref, model = reference_model(fit_checkpoint), load(native)
    assert not model.training
    # every buffer, including the non-persistent ones rebuilt from the config (built on the meta device)
    ref_buffers = dict(ref.named_buffers())
    assert ref_buffers.keys() == dict(model.named_buffers()).keys()
    assert all(torch.equal(ref_buffers[k], v) for k, v in model.named_buffers())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    for shape in [(2, 3, 64, 64), (1, 3, 48, 112)]:  # the training resolution and one never used in training
        assert_same_outputs(ref, model, torch.rand(*shape))
    a, b = ref.forward_intermediates(torch.ones(1, 3, 32, 48)), model.forward_intermediates(torch.ones(1, 3, 32, 48))
    assert a.indices == b.indices == [0, 1]
    for ia, ib in zip(a.intermediates, b.intermediates):
        assert torch.equal(ia.summary, ib.summary) and torch.equal(ia.features, ib.features)
    cfg = json.loads((native / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION and cfg["weights_sha256"] == file_sha256(native / "model.safetensors")
    assert cfg["config_sha256"] == config_sha256(cfg)
    assert cfg["preprocessing"]["resolution_step"] == 16 and cfg["preprocessing"]["mean"] == list(ref.config.student.mean)


def test_adaptor_outputs_are_mapped_back_through_the_inverse_normalizer(native):
    model = load(native)
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        out = model(x, adaptors=NAMES)
        for n in NAMES:
            normalized = model.adapt(n, tokens, normalized=True).features
            assert torch.equal(out[n].features, model.normalizers[n].inverse(normalized))
            assert torch.allclose(model.normalizers[n](out[n].features), normalized, atol=1e-5)
        # the CLIP head carries the (non-identity) test normalizer, dino_v2 none
        assert not torch.allclose(out["clip"].features, model.adapt("clip", tokens, normalized=True).features)
        assert torch.equal(out["dino_v2"].features, model.adapt("dino_v2", tokens, normalized=True).features)


def test_feature_formats_and_intermediates(native):
    model = load(native)
    x = torch.rand(2, 3, 48, 80)
    with torch.no_grad():
        nlc, nchw = model(x), model(x, feature_fmt="NCHW")
        b, n, c = nlc.features.shape
        assert (n, nchw.features.shape) == (3 * 5, (b, c, 3, 5))
        assert torch.equal(nchw.features.flatten(2).transpose(1, 2), nlc.features)
        full = model.forward_intermediates(x, feature_fmt="NCHW")
        assert torch.equal(full.final.features, nchw.features) and torch.equal(full.final.summary, nlc.summary)
        assert torch.equal(full.intermediates[-1].features, nchw.features)
        assert not torch.equal(full.intermediates[0].features, full.intermediates[-1].features)
        assert all(isinstance(o, StudentOutput) and o.summary.shape == nlc.summary.shape for o in full.intermediates)
        early = model.forward_intermediates(x, indices=[0], stop_early=True)
        assert early.final is None and early.indices == [0]
        assert torch.equal(early.intermediates[0].features, full.intermediates[0].features.flatten(2).transpose(1, 2))
        assert model.forward_intermediates(x, indices=1).indices == [len(model.backbone.blocks) - 1]
    with pytest.raises(ValueError, match="feature_fmt must be 'NLC' or 'NCHW'"):
        model.forward_intermediates(x, feature_fmt="NHWC")


@pytest.mark.parametrize("h,w", [(70, 64), (64, 33), (15, 100)])
def test_input_size_error_names_nearest_valid_sizes(native, h, w):
    model = load(native)
    bad = [(name, s) for name, s in (("height", h), ("width", w)) if s % 16]
    with pytest.raises(ValueError) as e:
        model(torch.rand(1, 3, h, w))
    for name, s in bad:
        lo, hi = nearest_valid_sizes(s, 16)
        assert lo % 16 == 0 and hi % 16 == 0 and lo <= max(s, 16) <= hi and hi - lo <= 16
        assert f"{name} {s} -> nearest valid ({lo}, {hi})" in str(e.value)


def test_adaptor_selection_keeps_backbone_and_drops_heads(fit_checkpoint, native, tmp_path):
    full = load(native)
    only = load(export_checkpoint(fit_checkpoint, tmp_path / "dino", adaptors=["dino_v2"]))
    bare = load(export_checkpoint(fit_checkpoint, tmp_path / "bare", adaptors=[]))
    assert list(only.adaptors) == ["dino_v2"] and list(bare.adaptors) == [] and list(bare.normalizers) == []
    assert not any(k.startswith(("adaptors.clip", "normalizers.clip"))
                   for k in load_file(str(tmp_path / "dino" / "model.safetensors")))
    x = torch.rand(2, 3, 64, 64)
    assert_same_outputs(full, only, x, adaptors=["dino_v2"])
    assert_same_outputs(full, bare, x, adaptors=None)
    with pytest.raises(KeyError, match="'clip' \\(it was dropped at export\\); this model has: dino_v2"):
        only(x, adaptors=["clip"])
    with pytest.raises(ExportError, match=r"unknown adaptor\(s\) \['sam'\]; this model has: clip, dino_v2"):
        export_checkpoint(fit_checkpoint, tmp_path / "x", adaptors=["sam"])


def test_timm_create_model_loads_an_export(native, fit_checkpoint):
    assert "radio_student" in timm.list_models("radio_student")
    ref = load(native)
    model = timm.create_model("radio_student", pretrained=True, pretrained_cfg_overlay=dict(file=str(native))).eval()
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    assert tuple(model.pretrained_cfg["mean"]) == ref.config.student.mean
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        tokens = model.forward_features((x - mean) / std)
        out = ref.forward_tokens(x)
    summary, patches = model.split_tokens(tokens)
    assert torch.equal(summary, out.summary) and torch.equal(patches, out.patches)
    fresh = timm.create_model("radio_student", radio_config=str(native))  # same architecture, random weights
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert not torch.equal(fresh.patch_embed.proj.weight, model.patch_embed.proj.weight)
    with pytest.raises(ExportError, match="no hosted weights"):
        timm.create_model("radio_student", pretrained=True)


def test_default_token_budget_is_stored(fit_checkpoint, tmp_path):
    out = export_checkpoint(fit_checkpoint, tmp_path / "s", num_tokens=64)
    assert json.loads((out / "config.json").read_text())["defaults"] == {"num_tokens": 64}
    assert load(out).export_defaults == {"num_tokens": 64}
    assert "default output-token budget: 64" in (out / "README.md").read_text()
    with pytest.raises(ExportError, match="--num-tokens must be a positive integer, got 0"):
        export_checkpoint(fit_checkpoint, tmp_path / "t", num_tokens=0)


# ---- errors ---------------------------------------------------------------------------------------------------
@pytest.fixture
def copy_of(native, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(native, dst)
    return dst


def _rewrite_weights(d, state):
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((d / "config.json").read_text())
    cfg["weights_sha256"] = file_sha256(d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(cfg))


def _rewrite_config(d, cfg):
    """Write an edited config.json with a matching checksum (an export made that way, not a corrupted one)."""
    (d / "config.json").write_text(json.dumps({**cfg, "config_sha256": config_sha256(cfg)}))


def test_truncated_weights_are_a_clear_error(copy_of):
    w = copy_of / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    for verify in (True, False):
        with pytest.raises(ExportError, match=r"model\.safetensors' is corrupted or truncated"):
            load(copy_of, verify=verify)


def test_corrupted_weights_are_a_clear_error(copy_of):
    w = copy_of / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF  # inside a tensor: only the checksum can tell
    w.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"model\.safetensors' is corrupted or truncated: its sha256"):
        load(copy_of)
    w.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json" + bytes(data[16:]))  # broken header
    with pytest.raises(ExportError, match="corrupted or truncated"):
        load(copy_of, verify=False)


def test_exports_of_format_version_1_still_load(copy_of, native):
    cfg = json.loads((copy_of / "config.json").read_text())
    cfg["format_version"] = 1  # written before has_adaptor, defaults and the checksums existed
    for key in ("weights_sha256", "config_sha256", "defaults"):
        del cfg[key]
    for t in cfg["teachers"]:
        del t["has_adaptor"]
    (copy_of / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UnverifiedExportWarning, match="has no weights_sha256: the export is unverified"):
        old = load(copy_of)
    assert_same_outputs(load(native), old, torch.rand(1, 3, 32, 32))


def test_newer_format_version_is_a_clear_error(copy_of):
    cfg = json.loads((copy_of / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (copy_of / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=f"format_version {FORMAT_VERSION + 1} is newer than this radio supports"):
        load(copy_of)


def test_missing_or_unknown_keys_are_clear_errors(copy_of):
    state = load_file(str(copy_of / "model.safetensors"))
    key = "adaptors.clip.features.fc_out.weight"
    _rewrite_weights(copy_of, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ExportError, match=f"missing keys \\['{key}'\\]"):
        load(copy_of)
    _rewrite_weights(copy_of, {**state, "backbone.cpe.pos_embed": torch.zeros(1, 64, 4, 4)})
    with pytest.raises(ExportError, match=r"shape mismatches \['backbone.cpe.pos_embed: \(1, 64, 4, 4\)"):
        load(copy_of)
    cfg = json.loads((copy_of / "config.json").read_text())
    cfg["teachers"][0]["normalizer"] = "phis_v9"
    _rewrite_config(copy_of, cfg)
    with pytest.raises(ExportError, match=r"config.json': unknown normalizer 'phis_v9'; valid normalizer names"):
        load(copy_of)
    cfg["teachers"][0]["normalizer"] = "none"
    cfg["student"]["embed_dims"] = 64
    _rewrite_config(copy_of, cfg)
    with pytest.raises(ExportError, match=r"config.json: student: unknown key\(s\) \['embed_dims'\]"):
        load(copy_of)


def test_no_pickle_is_ever_loaded(native, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an export was unpickled")

    for mod, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(mod, name, refuse)
    load(native)
    timm.create_model("radio_student", pretrained=True, pretrained_cfg_overlay=dict(file=str(native)))
    monkeypatch.undo()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(native / "config.json", pickled / "config.json")
    torch.save(load_file(str(native / "model.safetensors")), pickled / "pytorch_model.bin")
    with pytest.raises(ExportError, match="pytorch_model.bin is pickled; radio never unpickles an export"):
        load(pickled)


# ---- untrusted exports (a tiny student: milliseconds per load) ----------------------------------------------
@pytest.fixture
def tiny(tmp_path):
    return save_model(tiny_student(), tmp_path / "tiny")


def _flip_a_weight(d):
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-7] ^= 0x40  # inside the last tensor
    w.write_bytes(bytes(data))


def test_a_missing_checksum_warns_and_is_an_error_under_verify(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    del cfg["weights_sha256"]
    _rewrite_config(tiny, cfg)
    _flip_a_weight(tiny)  # without the checksum nothing can tell
    with pytest.warns(UnverifiedExportWarning, match=r"config.json' has no weights_sha256: the export is unverified"):
        load(tiny)
    with pytest.raises(ExportError, match=r"has no weights_sha256: .* load it with verify=False"):
        load(tiny, verify=True)
    with verification(True), pytest.raises(ExportError, match="has no weights_sha256"):
        load(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(tiny, verify=False)
    del cfg["config_sha256"]
    (tiny / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="has no weights_sha256 or config_sha256"):
        load(tiny, verify=True)


def test_an_edited_or_corrupted_config_is_caught_by_its_checksum(tiny):
    text = (tiny / "config.json").read_text()
    assert text.count('"r": 0,') == 1
    (tiny / "config.json").write_text(text.replace('"r": 0,', '"r": 1,'))  # one flipped bit: '0' -> '1'
    with pytest.raises(ExportError, match="config.json' was modified or corrupted after export"):
        load(tiny)
    assert load(tiny, verify=False).config.tome.r == 1  # what a check-less load would have used: other outputs


def _retype(d, edit):
    state = load_file(str(d / "model.safetensors"))
    edit(state)
    _rewrite_weights(d, state)


def test_a_tensor_of_another_dtype_or_with_nan_is_a_clear_error(tiny):
    key = "backbone.blocks.0.mlp.fc1.weight"
    _retype(tiny, lambda s: s.update({key: s[key].half()}))
    with pytest.raises(ExportError, match=rf"model.safetensors' does not match its config: .*dtype mismatches "
                                          rf"\['{key}: torch.float16 vs torch.float32'\]"):
        load(tiny)
    with pytest.raises(ExportError, match=rf"dtype mismatches \['{key}: torch.float16"):  # timm would cast it
        timm.create_model("radio_student", pretrained=True, pretrained_cfg_overlay=dict(file=str(tiny)))
    _retype(tiny, lambda s: s.update({key: s[key].float(), "normalizers.a.count": s["normalizers.a.count"].float()}))
    with pytest.raises(ExportError, match=r"normalizers.a.count: torch.float32 vs torch.float64"):
        load(tiny)
    _retype(tiny, lambda s: s.update({"normalizers.a.count": s["normalizers.a.count"].double(),
                                      "normalizers.a.fitted": s["normalizers.a.fitted"].to(torch.uint8)}))
    with pytest.raises(ExportError, match=r"normalizers.a.fitted: torch.uint8 vs torch.bool"):
        load(tiny)
    _retype(tiny, lambda s: s.update({"normalizers.a.fitted": s["normalizers.a.fitted"].bool()}))
    load(tiny)  # all back as they were
    _retype(tiny, lambda s: s[key].view(-1).__setitem__(3, float("nan")))
    with pytest.raises(ExportError, match=rf"model.safetensors': non-finite values \(NaN or infinity\) in \['{key}'\]"):
        load(tiny)


@pytest.mark.parametrize("path, value, match", [
    (("student", "depth"), "2", r"student.depth: must be an integer or null, got '2'"),
    (("student", "depth"), -1, r"student.depth: must be an integer >= 1, got -1"),
    (("student", "depth"), True, r"student.depth: must be an integer or null, got True"),
    (("student", "patch_size"), 16.0, r"student.patch_size: must be an integer, got 16.0"),
    (("student", "mean"), [0.5], r"student.mean: must be a list of 3 numbers, got \[0.5\]"),
    (("student", "std"), [0, 0, 0], r"student.std\[0\]: must be a finite number > 0, got 0"),
    (("student", "std"), [0.2, -0.2, 0.2], r"student.std\[1\]: must be a finite number > 0, got -0.2"),
    (("student", "embed_dim"), 10 ** 12, r"student.embed_dim: must be an integer in \[1, 65536\], got 1000"),
    (("student", "max_resolution"), 4, r"student.max_resolution: must be >= student.patch_size \(8\), got 4"),
    (("student", "arch"), "vit_gigantic", r"student.arch: unknown architecture 'vit_gigantic'"),
    (("teachers", 0, "feature_dim"), 10 ** 9, r"teachers\[0\].feature_dim: must be an integer in \[1, 655"),
    (("teachers", 0, "has_adaptor"), "yes", r"teachers\[0\].has_adaptor: must be true or false, got 'yes'"),
    (("teachers", 0, "name"), "a.b", r"teachers\[0\].name: must be a non-empty string without '.'"),
    (("adaptor", "num_inner"), 1.5, r"adaptor.num_inner: must be an integer, got 1.5"),
    (("tome", "num_tokens"), True, r"tome.num_tokens: must be an integer or null, got True"),
    (("format_version",), 0, r"format_version: must be a positive integer, got 0"),
    (("format_version",), -7, r"format_version: must be a positive integer, got -7"),
    (("format_version",), True, r"format_version: must be a positive integer, got True"),
    (("format_version",), "3", r"format_version: must be a positive integer, got '3'"),
    (("teachers",), {"a": 1}, r"teachers: must be a list of TeacherHead mappings, got \{'a': 1\}"),
    (("defaults",), [], r"defaults must be a JSON object, got list"),
    (("resolution_step",), 16, r"resolution_step is 16, which does not match the model's configuration \(8\)"),
    (("preprocessing", "mean"), [0, 0, 0], r"preprocessing.mean is \[0, 0, 0\], which does not match"),
    (("weights_sha256",), 12, r"weights_sha256 must be a sha256 \(64 hex digits\), got 12"),
])
def test_bad_config_values_are_export_errors_naming_file_and_key(tiny, path, value, match):
    cfg = json.loads((tiny / "config.json").read_text())
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    _rewrite_config(tiny, cfg)  # a consistent (checksummed) but bad config: the checks themselves must catch it
    with pytest.raises(ExportError, match=r"tiny/config.json'?: .*" + match):
        load(tiny)


def test_radio_eval_requires_checksums_unless_no_verify(tiny, synth_dir, tmp_path, capsys):
    cfg = json.loads((tiny / "config.json").read_text())
    del cfg["weights_sha256"]
    _rewrite_config(tiny, cfg)
    args = ["eval", "knn", "--model", str(tiny), "--data", str(synth_dir), "--limit", "16", "--resolution", "32",
            "--no-progress", "--pca-images", "0"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    assert "has no weights_sha256: the export is unverified" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "b"), "--no-verify"]) == 0
    assert json.loads((tmp_path / "b" / "report.json").read_text())["probes"]["knn"]["tiny"]
    from eval.run import EvalOptions, run_eval  # the Python entry point verifies the same way by default

    fast = {"limit": 16, "resolution": 32, "progress": False, "pca_images": 0}
    with pytest.raises(ExportError, match="has no weights_sha256: the export is unverified"):
        run_eval(["knn"], [str(tiny)], str(synth_dir), tmp_path / "c", EvalOptions(**fast))
    assert run_eval(["knn"], [str(tiny)], str(synth_dir), tmp_path / "d",
                    EvalOptions(**fast, verify=False))["probes"]["knn"]["tiny"]


# ---- model card and CLI -------------------------------------------------------------------------------------------
def _report(top1: float) -> dict:
    return {"title": "r", "summary": "kNN on generated shapes.",
            "probes": {"knn": {"student": {"shape": {"top1": top1, "chance": 0.25}, "colour": {"top1": 0.5}},
                               "clip": {"shape": {"top1": 0.375, "chance": 0.25}}}}}


def test_model_card_has_the_eval_results_found_next_to_the_run(fit_checkpoint, tmp_path):
    ckpt = tmp_path / "demo" / "run" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(fit_checkpoint, ckpt)
    (tmp_path / "demo" / "report.json").write_text(json.dumps(_report(0.8125)))
    card = (export_checkpoint(ckpt, tmp_path / "s") / "README.md").read_text()
    assert "| student | 0.5000 | 0.8125 |" in card and "| clip | - | 0.3750 |" in card
    assert "Chance: shape 0.2500" in card and "kNN on generated shapes." in card
    stale = ckpt.stat().st_mtime - 60  # a report older than the checkpoint (a previous run's) is not about it
    os.utime(tmp_path / "demo" / "report.json", (stale, stale))
    assert "## Evaluation" not in (export_checkpoint(ckpt, tmp_path / "s2") / "README.md").read_text()
    bare = tmp_path / "elsewhere" / "last.ckpt"
    bare.parent.mkdir()
    shutil.copy(fit_checkpoint, bare)
    assert "## Evaluation" not in (export_checkpoint(bare, tmp_path / "t") / "README.md").read_text()


def test_cli_export_options(fit_checkpoint, tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report(0.6875)))
    out = tmp_path / "s"
    rc = main(["export", fit_checkpoint, "--out", str(out), "--adaptors", "clip", "--num-tokens", "32",
               "--report", str(report)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "adaptors: clip" in printed and str(report) in printed
    cfg = json.loads((out / "config.json").read_text())
    assert [t["has_adaptor"] for t in cfg["teachers"]] == [True, False]
    assert cfg["defaults"]["num_tokens"] == 32 and cfg["provenance"]["report"] == str(report)
    card = (out / "README.md").read_text()
    assert "0.6875" in card and "| dino_v2 |" in card and "dropped" in card
    assert main(["export", fit_checkpoint, "--out", str(tmp_path / "t"), "--no-adaptors"]) == 0
    assert list(load(tmp_path / "t").adaptors) == []
    assert main(["export", fit_checkpoint, "--out", str(tmp_path / "u"), "--adaptors", "siglip"]) == 2
    assert "unknown adaptor(s) ['siglip']" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "v")]) == 2
    assert "nope.ckpt' does not exist" in capsys.readouterr().err


def test_checkpoint_is_read_without_unpickling_arbitrary_objects(fit_checkpoint, tmp_path):
    raw = read_checkpoint(fit_checkpoint)
    assert raw["radio_model_config"]["teachers"][0]["normalizer"] == "test_signed_affine"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "radio_model_config": {}, "x": radio.export.ExportInfo}, evil)
    with pytest.raises(ExportError, match="cannot be loaded safely"):
        read_checkpoint(evil)


def test_bad_report_or_config_json_is_a_clear_error(fit_checkpoint, copy_of, tmp_path):
    with pytest.raises(ExportError, match="--report '.*missing.json' does not exist"):
        export_checkpoint(fit_checkpoint, tmp_path / "s", report=tmp_path / "missing.json")
    (copy_of / "config.json").write_text("{not json")
    with pytest.raises(ExportError, match="config.json' is not valid JSON"):
        load(copy_of)
