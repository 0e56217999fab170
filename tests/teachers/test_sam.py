import numpy as np
import pytest
import torch
import torch.nn.functional as F

import teachers
from tests.helpers import TINY_SAM


def _tiny_sam(encoder):
    """A real segment_anything `Sam` around the teacher's encoder (tiny prompt encoder and mask decoder)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = encoder.img_size // 8
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(grid, grid),
                           input_image_size=(encoder.img_size, encoder.img_size), mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=32, iou_head_hidden_dim=32,
                          transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2))
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


def test_sam_adapter_equals_segment_anything_predictor_on_a_canvas_sized_image():
    from segment_anything import SamPredictor

    t = teachers.build(TINY_SAM)
    assert (t.patch_size, t.input_size, t.summary_dim, t.feature_dim) == (8, 64, 0, 32)
    assert not t.has_summary and t.resolution_for((3, 5)) == (64, 64)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    predictor = SamPredictor(_tiny_sam(t.model))
    with torch.no_grad():
        predictor.set_image(image)
    out = t(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert out.summary is None and out.features.shape == (1, 32, 8, 8)
    assert torch.allclose(out.features, predictor.features, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (40, 56), (50, 20)])
def test_sam_adapter_equals_image_encoder_on_sams_resize_and_padding(size):
    from segment_anything.utils.transforms import ResizeLongestSide

    t = teachers.build(TINY_SAM)
    sam = _tiny_sam(t.model)
    x = torch.rand(2, 3, *size)
    new = ResizeLongestSide.get_preprocess_shape(*size, 64)
    resized = F.interpolate(x, new, mode="bilinear", align_corners=False, antialias=True) if new != size else x
    with torch.no_grad():
        ref = sam.image_encoder(sam.preprocess(resized * 255))
    out = t(x)
    assert out.features.shape == ref.shape == (2, 32, 8, 8)
    assert torch.allclose(out.features, ref, atol=1e-4)
    region = t.valid_region(*size)
    assert (region.height, region.width) == new and max(new) == 64
    assert (region.grid_height, region.grid_width) == (-(-new[0] // 8), -(-new[1] // 8))
    assert region.scale == pytest.approx(64 / max(size))


def test_sam_pre_neck_features_are_what_the_neck_reads():
    t_neck = teachers.build(TINY_SAM)
    t_pre = teachers.build(TINY_SAM, options={"features": "pre_neck"})
    assert t_pre.feature_dim == 32 and t_pre.feature_source == "pre_neck"
    x = torch.rand(2, 3, 64, 64)
    pre = t_pre(x).features
    assert pre.shape == (2, 32, 8, 8)
    with torch.no_grad():
        assert torch.allclose(t_pre.model.neck(pre), t_neck(x).features, atol=1e-5)
    assert not torch.allclose(pre, t_neck(x).features, atol=1e-2)


def test_sam_rejects_unknown_variants_options_and_arch_keys():
    with pytest.raises(ValueError, match="unknown SAM variant 'vit_x'; valid: vit_b, vit_l, vit_h"):
        teachers.build(TINY_SAM, model="vit_x")
    with pytest.raises(ValueError, match=r"'sam' options: unknown key\(s\) \['colour'\]; allowed: \['feat"):
        teachers.build(TINY_SAM, options={"colour": 1})
    with pytest.raises(ValueError, match="options.features must be one of"):
        teachers.build(TINY_SAM, options={"features": "logits"})
    with pytest.raises(ValueError, match=r"unknown arch key\(s\) \['width'\]"):
        teachers.build(TINY_SAM, arch={"width": 3})
