"""Student-level CPE behaviour and timm's forward_intermediates on the CPE student with its prefix tokens."""
import pytest
import torch

from radio.model.vit import RADIOStudent, StudentConfig

CFG = dict(arch="custom", embed_dim=32, depth=3, num_heads=2, patch_size=8, max_resolution=128, cpe_drop=0.0,
           register_multiple=4)


def _student(**over) -> RADIOStudent:
    torch.manual_seed(0)
    return RADIOStudent(StudentConfig(**{**CFG, **over}), num_summary_tokens=3)


def test_default_max_resolution_is_2048_and_sets_the_position_grid():
    cfg = StudentConfig(arch="custom", embed_dim=32, depth=1, num_heads=2)
    assert cfg.max_resolution == 2048
    s = RADIOStudent(cfg)
    assert s.cpe.max_grid == 2048 // 16 and tuple(s.cpe.pos_embed.shape[-2:]) == (128, 128)
    assert _student(max_resolution=96).cpe.max_grid == 12


def test_inference_is_deterministic_and_uses_the_top_left_window_of_the_resized_grid():
    s = _student().eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        a, b = s.forward_features(x), s.forward_features(x)
    assert torch.equal(a, b)
    # the embedding added to the patch tokens is the top-left 4 x 6 window of the grid resized to 6 x 6
    grid = torch.nn.functional.interpolate(s.cpe.pos_embed, size=(6, 6), mode="bilinear", align_corners=False,
                                           antialias=True)
    expected = grid[:, :, :4, :6].flatten(2).transpose(1, 2)
    tokens = s.patch_embed(x)
    seq = s._pos_embed(tokens)
    assert seq.shape[1] == s.num_prefix_tokens + 24
    assert torch.allclose(seq[:, s.num_prefix_tokens:] - tokens.reshape(2, 24, -1), expected.expand(2, -1, -1),
                          atol=1e-6)
    assert torch.equal(seq[:, : s.num_prefix_tokens], s.reg_token.expand(2, -1, -1))


def test_training_calls_get_different_crops():
    s = _student().train()
    x = torch.rand(2, 3, 32, 32)
    tokens = s.patch_embed(x)
    a, b = s._pos_embed(tokens), s._pos_embed(tokens)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a[0, s.num_prefix_tokens:] - a[1, s.num_prefix_tokens:],
                              tokens[0].flatten(0, 1) - tokens[1].flatten(0, 1))  # per-sample crops differ
    with torch.no_grad():
        assert not torch.allclose(s.forward_features(x), s.forward_features(x))


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_forward_intermediates_with_cpe_and_prefix_tokens(size):
    s = _student().eval()
    x = torch.rand(2, 3, *size)
    h, w = size[0] // 8, size[1] // 8
    with torch.no_grad():
        final, inter = s.forward_intermediates(x, indices=[0, 2], return_prefix_tokens=True, output_fmt="NCHW")
        full = s.forward_features(x)
        nlc = s.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
    assert torch.allclose(final, full, atol=1e-6)  # final norm is the identity
    assert len(inter) == 2
    for spatial, prefix in inter:
        assert spatial.shape == (2, 32, h, w) and prefix.shape == (2, s.num_prefix_tokens, 32)
    last_spatial, last_prefix = inter[-1]
    assert torch.allclose(last_prefix, full[:, : s.num_prefix_tokens], atol=1e-6)
    assert torch.allclose(last_spatial.flatten(2).transpose(1, 2), full[:, s.num_prefix_tokens:], atol=1e-6)
    assert nlc[0].shape == (2, h * w, 32) and torch.allclose(nlc[0], full[:, s.num_prefix_tokens:], atol=1e-6)
