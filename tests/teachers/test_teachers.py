import pytest
import torch

import teachers
from radio.registry import RegistryError
from tests.helpers import TINY_CLIP, TINY_DINO, TINY_HF, TINY_SAM, TINY_SIGLIP

ALL_TINY = [TINY_CLIP, TINY_SIGLIP, TINY_DINO, TINY_SAM, TINY_HF]


def _norm(t, x):
    mean = torch.tensor(t.mean).view(1, 3, 1, 1)
    std = torch.tensor(t.std).view(1, 3, 1, 1)
    return (x - mean) / std


def test_registry_lists_families_and_rejects_unknown_names():
    assert {"clip", "siglip", "dino_v2", "sam", "hf"} <= set(teachers.available())
    with pytest.raises(RegistryError, match="unknown teacher 'dinov3'; valid teacher names: .*clip"):
        teachers.build("dinov3")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        teachers.build({"name": "clip", "colour": "red"})


def test_open_clip_adapter_equals_open_clip_forward():
    t = teachers.build(TINY_CLIP)
    assert (t.patch_size, t.input_size, t.summary_dim, t.feature_dim) == (16, 64, 32, 64)
    assert t.has_summary and not t.dynamic_resolution
    x = torch.rand(2, 3, 64, 64)
    out = t(x)
    captured = {}
    visual = t.model.visual
    h = visual.transformer.resblocks[-1].register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
    with torch.no_grad():
        ref_summary = t.model.encode_image(_norm(t, x))
    h.remove()
    tokens = captured["o"]
    ref_feats = tokens[:, 1:].transpose(1, 2).reshape(2, 64, 4, 4)
    assert torch.allclose(out.summary, ref_summary, atol=1e-5)
    assert torch.allclose(out.features, ref_feats, atol=1e-5)
    with pytest.raises(ValueError, match="runs only at 64x64"):
        t(torch.rand(1, 3, 32, 32))


def test_open_clip_siglip_with_a_timm_trunk_equals_encode_image():
    t = teachers.build(TINY_SIGLIP)
    visual = t.model.visual
    assert type(t.model).__name__ == "CustomTextCLIP" and hasattr(visual, "trunk")
    assert visual.trunk.global_pool == "map" and visual.trunk.num_prefix_tokens == 1  # one register, no CLS
    assert (t.patch_size, t.input_size, t.summary_dim, t.feature_dim) == (16, 64, 96, 96)
    assert t.mean == (0.5, 0.5, 0.5) and t.std == (0.5, 0.5, 0.5)  # SigLIP's published preprocessing
    x = torch.rand(2, 3, 64, 64)
    out = t(x)
    captured = {}
    h = visual.trunk.blocks[-1].register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
    with torch.no_grad():
        ref_summary = t.model.encode_image(_norm(t, x))
    h.remove()
    ref_feats = captured["o"][:, 1:].transpose(1, 2).reshape(2, 96, 4, 4)
    assert torch.allclose(out.summary, ref_summary, atol=1e-5)
    assert torch.allclose(out.features, ref_feats, atol=1e-5)
    with torch.no_grad():  # zero-shot: text embeddings live in the summary's space
        assert t.encode_text(torch.randint(0, 1000, (2, 16))).shape == (2, t.summary_dim)


@pytest.mark.parametrize("model", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
@pytest.mark.parametrize("size", [(56, 56), (84, 112)])
def test_dinov2_adapter_equals_timm_forward(size, model):
    t = teachers.build(TINY_DINO, model=model)
    assert t.model.num_prefix_tokens == (5 if "reg4" in model else 1)
    assert t.patch_size == 14 and t.dynamic_resolution and t.summary_dim == 48
    x = torch.rand(2, 3, *size)
    out = t(x)
    with torch.no_grad():
        final, inter = t.model.forward_intermediates(_norm(t, x), indices=1, norm=True, output_fmt="NCHW")
        cls = t.model.forward_head(final, pre_logits=True)
    assert out.features.shape == (2, 48, size[0] // 14, size[1] // 14)
    assert torch.allclose(out.features, inter[-1], atol=1e-5)
    assert torch.allclose(out.summary, cls, atol=1e-5)
    assert t.resolution_for((4, 6)) == (56, 84)


@pytest.mark.parametrize("spec", ALL_TINY, ids=lambda s: s["name"])
def test_teachers_are_frozen_and_stay_in_eval_mode(spec):
    t = teachers.build(spec)
    assert not any(p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    x = torch.rand(1, 3, t.input_size, t.input_size, requires_grad=True)
    out = t(x)
    assert not out.features.requires_grad and (out.summary is None or not out.summary.requires_grad)
    assert out.features.shape[1] == t.feature_dim and (out.summary is None) == (not t.has_summary)


def test_random_teachers_are_rebuilt_identically_from_their_seed():
    a, b = teachers.build(TINY_DINO), teachers.build(TINY_DINO)
    c = teachers.build(TINY_DINO, seed=99)
    pa, pb, pc = (next(iter(m.model.parameters())) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_unknown_library_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope'"):
        teachers.build("clip", model="ViT-Nope", pretrained=False)
