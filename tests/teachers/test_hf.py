import json

import pytest
import torch

import teachers
from tests.helpers import TINY_HF, TINY_HF_ARCHS

# prefix tokens before the patch tokens in each architecture's last_hidden_state
PREFIX = {"dinov2": 1, "dinov2_with_registers": 5, "siglip_vision_model": 0, "clip_vision_model": 1,
          "siglip2_vision_model": 0}


def _norm(t, x):
    return (x - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(t.std).view(1, 3, 1, 1)


def _reference(t, kind, x):
    """The transformers model's own outputs on its own input format."""
    xn = _norm(t, x)
    with torch.no_grad():
        if kind == "siglip2_vision_model":
            from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

            patches = torch.stack([convert_image_to_patches(im, 8) for im in xn])
            h, w = x.shape[-2] // 8, x.shape[-1] // 8
            out = t.model(pixel_values=patches, pixel_attention_mask=torch.ones(len(x), h * w, dtype=torch.long),
                          spatial_shapes=torch.tensor([[h, w]] * len(x)))
        elif kind in ("siglip_vision_model", "clip_vision_model"):
            out = t.model(pixel_values=xn, interpolate_pos_encoding=x.shape[-1] != 32)
        else:
            out = t.model(pixel_values=xn)
    return out


@pytest.mark.parametrize("kind", sorted(TINY_HF_ARCHS))
def test_hf_adapter_equals_transformers_outputs_at_two_resolutions(kind):
    options = {"dynamic_resolution": True} if kind in ("siglip_vision_model", "clip_vision_model") else None
    t = teachers.build(TINY_HF, arch=TINY_HF_ARCHS[kind], options=options)
    assert t.patch_size == 8 and t.input_size == 32 and t.feature_dim == 32 and t.summary_dim == 32
    assert t.dynamic_resolution and t.resolution_for((3, 5)) == (24, 40)
    for size in [(32, 32), (24, 40)]:
        x = torch.rand(2, 3, *size)
        out = t(x)
        ref = _reference(t, kind, x)
        h, w = size[0] // 8, size[1] // 8
        tokens = ref.last_hidden_state
        assert tokens.shape[1] == PREFIX[kind] + h * w
        grid = tokens[:, PREFIX[kind]:].transpose(1, 2).reshape(2, 32, h, w)
        assert torch.allclose(out.features, grid, atol=1e-5)
        assert torch.allclose(out.summary, ref.pooler_output, atol=1e-5)


def test_hf_fixed_size_models_run_at_their_native_size_unless_asked():
    t = teachers.build(TINY_HF, arch=TINY_HF_ARCHS["siglip_vision_model"])
    assert not t.dynamic_resolution and t.resolution_for((5, 5)) == (32, 32)
    with pytest.raises(ValueError, match="runs only at 32x32"):
        t(torch.rand(1, 3, 40, 40))
    assert t(torch.rand(1, 3, 32, 32)).features.shape == (1, 32, 4, 4)


def test_hf_loads_a_local_directory_and_its_preprocessing(tmp_path):
    src = teachers.build(TINY_HF)
    src.model.save_pretrained(tmp_path / "dino")
    (tmp_path / "dino" / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "BitImageProcessor", "image_mean": [0.5, 0.4, 0.3],
                    "image_std": [0.2, 0.25, 0.3]}))
    t = teachers.build("hf", model=str(tmp_path / "dino"))
    assert t.mean == (0.5, 0.4, 0.3) and t.std == (0.2, 0.25, 0.3)
    for (k, p), (_, q) in zip(src.model.state_dict().items(), t.model.state_dict().items(), strict=True):
        assert torch.equal(p, q), k
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = src.model(pixel_values=_norm(t, x))
    assert torch.allclose(t(x).summary, ref.pooler_output, atol=1e-6)


def test_hf_takes_the_vision_tower_of_a_vision_language_checkpoint(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    vision = {k: v for k, v in TINY_HF_ARCHS["siglip_vision_model"].items() if k != "model_type"}
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "vocab_size": 100, "max_position_embeddings": 16}
    torch.manual_seed(0)
    full = SiglipModel(SiglipConfig(vision_config=vision, text_config=text)).eval()
    full.save_pretrained(tmp_path / "siglip")
    t = teachers.build("hf", model=str(tmp_path / "siglip"))
    assert type(t.model).__name__ == "SiglipVisionModel"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = full.vision_model(pixel_values=_norm(t, x))
    assert torch.allclose(t(x).summary, ref.pooler_output, atol=1e-5)
    assert torch.allclose(t(x).features, ref.last_hidden_state.transpose(1, 2).reshape(2, 32, 4, 4), atol=1e-5)


def test_hf_rejects_unknown_options_and_an_arch_without_model_type():
    with pytest.raises(ValueError, match=r"options: unknown key\(s\) \['remote'\]; allowed: .*'trust_remote"):
        teachers.build(TINY_HF, options={"remote": True})
    with pytest.raises(ValueError, match="arch must name the config's model_type"):
        teachers.build(TINY_HF, arch={"hidden_size": 32})
