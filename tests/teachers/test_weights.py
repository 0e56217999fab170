"""Pretrained loading: local files for every family, and one clear error when weights are missing or offline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import teachers
from teachers._weights import TeacherWeightsError
from tests.helpers import TINY_CLIP, TINY_DINO, TINY_HF, TINY_SAM, TINY_SIGLIP

ALL_TINY = [TINY_CLIP, TINY_SIGLIP, TINY_DINO, TINY_SAM, TINY_HF]


def _save_weights(t, directory):
    """Write a teacher's weights the way its library distributes them; returns the `pretrained` path."""
    if t.name == "hf":
        t.model.save_pretrained(directory / "hf")
        return str(directory / "hf")
    if t.name == "sam":  # a full SAM checkpoint: the adapter takes the image_encoder entries
        sd = {f"image_encoder.{k}": v for k, v in t.model.state_dict().items()}
        sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
        torch.save(sd, directory / "sam.pth")
        return str(directory / "sam.pth")
    save_file({k: v.contiguous() for k, v in t.model.state_dict().items()}, directory / "w.safetensors")
    return str(directory / "w.safetensors")


@pytest.mark.parametrize("spec", ALL_TINY, ids=lambda s: s["name"])
def test_a_local_weight_file_is_loaded_for_every_family(spec, tmp_path):
    original = teachers.build(spec)
    path = _save_weights(original, tmp_path)
    loaded = teachers.build(spec, seed=99, pretrained=path)
    other = teachers.build(spec, seed=99)
    x = torch.rand(2, 3, original.input_size, original.input_size)
    ref, out, rnd = original(x), loaded(x), other(x)
    assert torch.allclose(out.features, ref.features, atol=1e-6)
    assert not torch.allclose(rnd.features, ref.features, atol=1e-3)
    if ref.summary is not None:
        assert torch.allclose(out.summary, ref.summary, atol=1e-6)
    assert loaded.mean == original.mean and loaded.std == original.std


@pytest.mark.parametrize("spec", ALL_TINY, ids=lambda s: s["name"])
def test_a_missing_local_file_is_one_clear_error_naming_teacher_and_path(spec, tmp_path):
    missing = str(tmp_path / "nowhere" / "weights.safetensors")
    with pytest.raises(TeacherWeightsError) as info:
        teachers.build(spec, pretrained=missing)
    msg = str(info.value)
    assert f"teacher {spec['name']!r}" in msg and missing in msg and "Pass a local file instead: pretrained:" in msg


def test_a_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, tmp_path / "w.safetensors")
    with pytest.raises(TeacherWeightsError, match=r"teacher 'dino_v2': could not load .* from local path .*w\."):
        teachers.build(TINY_DINO, pretrained=str(tmp_path / "w.safetensors"))


# What each family's default (pretrained) build must name when its weights are unavailable.
DEFAULT_NAMES = {
    "clip": "ViT-H-14-378-quickgelu:dfn5b", "siglip": "ViT-SO400M-14-SigLIP-384:webli",
    "dino_v2": "vit_giant_patch14_reg4_dinov2.lvd142m", "hf": "google/siglip2-so400m-patch14-384",
    "sam": "sam_vit_h_4b8939.pth",
}
_SCRIPT = """
import json, sys, time
import teachers
from teachers._weights import TeacherWeightsError
out = {}
for name in sys.argv[1:]:
    t0 = time.time()
    try:
        teachers.build(name)
        out[name] = {"error": None}
    except TeacherWeightsError as e:
        out[name] = {"error": str(e), "seconds": time.time() - t0}
print(json.dumps(out))
"""


def _defaults_offline(tmp_path, env, names):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **env}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, *names], capture_output=True, text=True, env=env,
                       timeout=240, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_default_weights_offline_fail_with_one_clear_error_per_family(tmp_path):
    """HF_HUB_OFFLINE=1 and empty caches: every family's default build names what it tried and how to fix it."""
    results = _defaults_offline(tmp_path, {"HF_HUB_OFFLINE": "1"}, list(DEFAULT_NAMES))
    for name, tried in DEFAULT_NAMES.items():
        msg = results[name]["error"]
        assert msg is not None, f"{name} built without weights"
        assert msg.startswith(f"teacher {name!r}: could not load pretrained weights from ") and tried in msg
        assert "Pass a local file instead: pretrained: /path/to/" in msg


def test_an_unreachable_hub_fails_fast_instead_of_retrying(tmp_path):
    """No offline flag but a hub that does not answer: the probe switches to the cache only (no retries)."""
    hub = ["clip", "siglip", "dino_v2", "hf"]  # SAM downloads from Meta's URL, not the hub
    results = _defaults_offline(tmp_path, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, hub)
    for name in hub:
        msg = results[name]["error"]
        assert msg is not None and DEFAULT_NAMES[name] in msg
        # huggingface_hub's own retries back off for 1+2+4+8+8 s per file; the guard makes none
        assert results[name]["seconds"] < 15, results[name]


def test_hub_guard_turns_offline_mode_on_only_while_the_hub_is_unreachable(monkeypatch):
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    import teachers._weights as w

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(w, "reachable", lambda url, timeout=w.PROBE_TIMEOUT_S: False)
    with w.hub_guard():
        assert constants.HF_HUB_OFFLINE is True
        with pytest.raises(LocalEntryNotFoundError):
            hf_hub_download("radio-tests/never-published", "model.safetensors")
    assert constants.HF_HUB_OFFLINE is False
    monkeypatch.setattr(w, "reachable", lambda url, timeout=w.PROBE_TIMEOUT_S: True)
    with w.hub_guard():
        assert constants.HF_HUB_OFFLINE is False
