import math

import pytest
import torch

from radio.model import ModelConfig, RADIOModel, StudentConfig, TeacherHead
from radio.model.cpe import CroppedPosEmbed, sample_crop_windows, window_sampling_grid
from radio.model.vit import RADIOStudent

TINY = dict(arch="custom", embed_dim=32, depth=2, num_heads=2, patch_size=8, max_resolution=128)


def test_prefix_is_summary_tokens_padded_by_registers():
    s = RADIOStudent(StudentConfig(**TINY, register_multiple=8), num_summary_tokens=3)
    assert s.num_summary_tokens == 3 and s.num_registers == 5 and s.num_prefix_tokens == 8
    s = RADIOStudent(StudentConfig(**TINY, register_multiple=4), num_summary_tokens=4)
    assert s.num_registers == 0 and s.num_prefix_tokens == 4
    s = RADIOStudent(StudentConfig(**TINY, num_registers=2), num_summary_tokens=1)
    assert s.num_prefix_tokens == 3


def test_registered_sizes_and_custom_validation():
    assert StudentConfig(arch="vit_base").resolved() == (768, 12, 12)
    assert StudentConfig(arch="vit_huge").resolved() == (1280, 32, 16)
    assert StudentConfig(arch="vit_large", depth=2).resolved() == (1024, 2, 16)
    with pytest.raises(ValueError, match="needs student.embed_dim"):
        StudentConfig(arch="custom").resolved()
    with pytest.raises(ValueError, match="student.arch: unknown architecture 'vit_gigantic'"):
        StudentConfig(arch="vit_gigantic").resolved()


def test_final_norm_and_head_are_identity():
    s = RADIOStudent(StudentConfig(**TINY))
    assert isinstance(s.norm, torch.nn.Identity) and isinstance(s.head, torch.nn.Identity)


def test_cpe_inference_window_is_top_left_of_resized_grid():
    cpe = CroppedPosEmbed(dim=4, max_grid=16).eval()
    grid = cpe.pos_embed.detach()
    # full-size input uses the grid itself
    assert torch.equal(cpe(1, 16, 16).transpose(1, 2).reshape(1, 4, 16, 16), grid)
    # a 8 x 4 input: grid resized to 8 x 8, then the top-left 8 x 4 window
    resized = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False,
                                              antialias=True)
    out = cpe(2, 8, 4).transpose(1, 2).reshape(1, 4, 8, 4)
    assert torch.allclose(out, resized[:, :, :8, :4])
    assert torch.equal(cpe(1, 8, 4), cpe(1, 8, 4))  # deterministic


def test_cpe_training_crops_differ_between_calls_and_samples():
    torch.manual_seed(0)
    cpe = CroppedPosEmbed(dim=4, max_grid=16, drop_prob=0.0).train()
    a, b = cpe(3, 4, 4), cpe(3, 4, 4)
    assert a.shape == (3, 16, 4)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a[0], a[1])


def test_cpe_crop_windows_follow_the_distribution():
    torch.manual_seed(0)
    w = sample_crop_windows(20000, min_scale=math.sqrt(0.1), max_aspect=4 / 3)
    ox, oy, sx, sy = w.unbind(1)
    assert (sx <= 1).all() and (sy <= 1).all() and (ox >= 0).all() and (ox + sx <= 1 + 1e-6).all()
    assert (oy + sy <= 1 + 1e-6).all()
    scale = (sx * sy).sqrt()  # geometric mean recovers s where no clamping happened
    assert scale.min() >= math.sqrt(0.1) * 0.85 and scale.max() <= 1.0 + 1e-6
    aspect = (sx / sy).sqrt()
    unclamped = (sx < 1) & (sy < 1)
    assert aspect[unclamped].min() >= 3 / 4 - 1e-4 and aspect[unclamped].max() <= 4 / 3 + 1e-4


def test_window_grid_maps_a_full_window_to_cell_centres():
    g = window_sampling_grid(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 2, 2)
    assert torch.allclose(g[0, :, :, 0], torch.tensor([[-0.5, 0.5], [-0.5, 0.5]]))
    assert torch.allclose(g[0, :, :, 1], torch.tensor([[-0.5, -0.5], [0.5, 0.5]]))


def test_cpe_position_drop_zeroes_whole_samples():
    torch.manual_seed(0)
    cpe = CroppedPosEmbed(dim=4, max_grid=8, drop_prob=0.5).train()
    out = cpe(64, 4, 4)
    zero = (out.abs().sum(dim=(1, 2)) == 0)
    assert 10 < zero.sum() < 54


def _model():
    cfg = ModelConfig(StudentConfig(**TINY, register_multiple=4),
                      [TeacherHead("a", 16, 24), TeacherHead("b", None, 12), TeacherHead("c", 8, 8)])
    return RADIOModel(cfg).eval()


def test_model_outputs_and_formats():
    m = _model()
    x = torch.rand(2, 3, 32, 48)
    out = m(x)
    assert out.summary.shape == (2, 2 * 32)  # two summary teachers -> two CLS tokens
    assert out.features.shape == (2, 4 * 6, 32)
    nchw = m(x, feature_fmt="NCHW").features
    assert nchw.shape == (2, 32, 4, 6)
    assert torch.allclose(nchw.flatten(2).transpose(1, 2), out.features)
    ad = m(x, adaptors=["a", "b"])
    assert ad["a"].summary.shape == (2, 16) and ad["a"].features.shape == (2, 24, 24)
    assert ad["b"].summary is None and ad["b"].features.shape == (2, 24, 12)
    assert torch.equal(m(x).summary, out.summary)  # eval mode is deterministic


def test_bad_input_size_names_nearest_valid_sizes():
    with pytest.raises(ValueError, match=r"height 30 -> nearest valid \(24, 32\)"):
        _model()(torch.rand(1, 3, 30, 32))
    with pytest.raises(KeyError, match="unknown adaptor 'zzz'"):
        _model()(torch.rand(1, 3, 32, 32), adaptors=["zzz"])


def test_config_roundtrip_and_errors():
    cfg = _model().config
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["format_version"] = 99
    with pytest.raises(ValueError, match="format_version 99 is newer"):
        ModelConfig.from_dict(d, "x.json")
    d = cfg.to_dict()
    d["student"]["bogus"] = 1
    with pytest.raises(ValueError, match=r"x.json: student: unknown key\(s\) \['bogus'\]"):
        ModelConfig.from_dict(d, "x.json")
    d = cfg.to_dict()
    del d["teachers"][0]["feature_dim"]
    with pytest.raises(ValueError, match=r"teachers\[0\]: missing key\(s\) \['feature_dim'\]"):
        ModelConfig.from_dict(d, "x.json")
