import torch

from radio.losses import (
    LossConfig,
    cos_smoothl1_loss,
    feature_loss,
    match_grids,
    mse_loss,
    summary_cosine_loss,
    tokens_to_grid,
)


def test_losses_are_zero_for_equal_inputs_and_positive_otherwise():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8, 3, 3), torch.randn(4, 8, 3, 3)
    for fn in (cos_smoothl1_loss, mse_loss):
        assert fn(a, a).abs() < 1e-6 and fn(a, b) > 0 and fn(a, b).ndim == 0
    s1, s2 = torch.randn(4, 8), torch.randn(4, 8)
    assert summary_cosine_loss(s1, s1).abs() < 1e-6 and summary_cosine_loss(s1, -s1).item() == 2.0
    assert summary_cosine_loss(s1, 3 * s1).abs() < 1e-6  # scale invariant
    assert 0 < summary_cosine_loss(s1, s2) < 2


def test_cos_smoothl1_matches_its_definition():
    torch.manual_seed(1)
    a, b = torch.randn(2, 5, 2, 2), torch.randn(2, 5, 2, 2) * 3
    cos = 1 - torch.nn.functional.cosine_similarity(a, b, dim=1).mean()
    d = (a - b).abs()
    sl1 = torch.where(d < 2.0, 0.5 * d**2 / 2.0, d - 1.0).mean()
    assert torch.allclose(cos_smoothl1_loss(a, b), 0.9 * cos + 0.1 * sl1)
    assert torch.allclose(feature_loss(a, b, LossConfig()), 0.9 * cos + 0.1 * sl1)
    assert torch.allclose(feature_loss(a, b, LossConfig(feature="mse")), ((a - b) ** 2).mean())


def test_match_grids_resizes_the_smaller_to_the_larger():
    s, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 8, 6)
    ms, mt = match_grids(s, t)
    assert ms.shape == mt.shape == (2, 4, 8, 6) and torch.equal(mt, t)
    # align_corners=True keeps the corner values
    assert torch.allclose(ms[..., 0, 0], s[..., 0, 0]) and torch.allclose(ms[..., -1, -1], s[..., -1, -1])
    same_s, same_t = match_grids(t, t)
    assert same_s is t and same_t is t


def test_tokens_to_grid_layout():
    g = torch.arange(2 * 3 * 6, dtype=torch.float).reshape(1, 6, 6)  # N=6 tokens, C=6
    grid = tokens_to_grid(g, (2, 3))
    assert grid.shape == (1, 6, 2, 3) and torch.equal(grid[0, :, 1, 2], g[0, 5])

