"""Fixed-size teachers whose input size is not a multiple of their patch (SigLIP-SO400M-14 at 384: 27 x 27 cells),
and open_clip's random-initialisation warning."""
import copy
import logging

import pytest
import torch

import teachers
from radio.cache.writer import cache_teacher
from tests.helpers import TINY_CLIP, TINY_DINO, TINY_SIGLIP

# The SigLIP classes of ViT-SO400M-14-SigLIP-384 (CustomTextCLIP + timm trunk) with a 72 px input and 16 px
# patches: like 384 / 14, the size is not a multiple of the patch, and the trunk's patch embedding floors.
ODD_SIGLIP = copy.deepcopy(TINY_SIGLIP)
ODD_SIGLIP["arch"]["vision_cfg"]["image_size"] = 72


def test_fixed_size_teacher_runs_at_its_own_size_with_a_floored_grid():
    t = teachers.build(ODD_SIGLIP)
    assert (t.input_size, t.patch_size) == (72, 16) and not t.dynamic_resolution
    assert t.resolution_for((9, 9)) == (72, 72)
    x = torch.rand(2, 3, 72, 72)
    out = t(x)
    assert out.features.shape == (2, t.feature_dim, 4, 4) and out.summary.shape == (2, t.summary_dim)
    region = t.valid_region(72, 72)
    assert (region.grid_height, region.grid_width) == (4, 4) == t.feature_grid(72, 72)
    # the patch tokens of the trunk are the features: nothing is padded or interpolated
    captured = {}
    trunk = t.model.visual.trunk
    h = trunk.blocks[-1].register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
    with torch.no_grad():
        t.model.encode_image((x - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(t.std).view(1, 3, 1, 1))
    h.remove()
    ref = captured["o"][:, trunk.num_prefix_tokens:].transpose(1, 2).reshape(2, -1, 4, 4)
    assert torch.allclose(out.features, ref, atol=1e-5)
    with pytest.raises(ValueError, match="runs only at 72x72, got 64x64"):
        t(torch.rand(1, 3, 64, 64))


def test_dynamic_teachers_still_need_multiples_of_their_patch():
    t = teachers.build(TINY_DINO)
    assert t(torch.rand(1, 3, 42, 56)).features.shape[-2:] == (3, 4)
    with pytest.raises(ValueError, match="input 60x56 is not a multiple of its patch size 14"):
        t(torch.rand(1, 3, 60, 56))


def test_a_fixed_size_teacher_off_the_patch_grid_can_be_cached(synth_dir, tmp_path):
    t = teachers.build(ODD_SIGLIP)
    meta = cache_teacher(t, str(synth_dir / "val"), tmp_path, t.resolution_for((4, 4)), progress=False)
    assert meta["resolution"] == [72, 72] and meta["grid"] == [4, 4]
    assert meta["region"]["grid_height"] == 4 and meta["features_shape"] == [t.feature_dim, 4, 4]


RANDOM_INIT = "No pretrained weights loaded for model"


def test_random_tiny_open_clip_teachers_build_without_the_random_init_warning(caplog):
    with caplog.at_level(logging.WARNING):
        teachers.build(TINY_CLIP)
        teachers.build(TINY_SIGLIP)
    assert not [r for r in caplog.records if RANDOM_INIT in r.getMessage()]
    # silenced only while building: the same warning from anywhere else still shows
    with caplog.at_level(logging.WARNING):
        logging.warning(f"{RANDOM_INIT} 'x'. Model initialized randomly.")
    assert [r for r in caplog.records if RANDOM_INIT in r.getMessage()]
    assert not logging.getLogger().filters
