"""Properties of the pure token-merging functions (radio.tome)."""
import math

import pytest
import torch

from radio import tome
from radio.tome import (
    bipartite_soft_matching,
    budget_soft_matching,
    budget_stride,
    cell_anchors,
    clamp_r,
    group_index,
    merge_schedule,
    merge_wavg,
    tokens_per_layer,
)


def _inputs(b=3, n=37, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(b, n, 6, generator=g)
    x = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    size = torch.randint(1, 5, (b, n, 1), generator=g).to(torch.float64)
    return metric, x, size


def _group_means(x, size, groups, num_out):
    """Independent reference: size-weighted mean of x over each group, (B, num_out, C)."""
    b, _, c = x.shape
    num = torch.zeros(b, num_out, c, dtype=x.dtype).scatter_add_(1, groups[..., None].expand(-1, -1, c), x * size)
    den = torch.zeros(b, num_out, 1, dtype=x.dtype).scatter_add_(1, groups[..., None], size)
    return num / den, den


def test_public_api_is_reachable_from_radio():
    import radio

    assert radio.tome.bipartite_soft_matching is bipartite_soft_matching and radio.tome.merge_wavg is merge_wavg


def test_r_zero_is_the_identity():
    metric, x, size = _inputs()
    merge, unmerge = bipartite_soft_matching(metric, 0, protected=2)
    y, s = merge_wavg(merge, x, size)
    assert torch.equal(y, x) and torch.equal(s, size) and torch.equal(unmerge(y), x)
    y, s = merge_wavg(budget_soft_matching(metric[:, :36], (6, 6), 36)[0], x[:, :36])
    assert torch.equal(y, x[:, :36]) and torch.equal(s, torch.ones_like(s))


@pytest.mark.parametrize("protected", [0, 1, 5])
@pytest.mark.parametrize("r", [1, 7, 16, 100])
def test_bipartite_merge_conserves_weighted_sum_and_protects_prefix(r, protected):
    metric, x, size = _inputs()
    size[:, :protected] = 1  # protected tokens never merge, so in a model their size stays 1
    x[:, :protected] = x[:, protected:2 * protected]  # protected tokens identical to others still never merge
    metric[:, :protected] = metric[:, protected:2 * protected]
    merge, _ = bipartite_soft_matching(metric, r, protected)
    y, s = merge_wavg(merge, x, size)
    n, r_eff = x.shape[1], clamp_r(x.shape[1], r, protected)
    assert r_eff == min(r, math.ceil((n - protected) / 2))
    assert y.shape == (3, n - r_eff, 8) and s.shape == (3, n - r_eff, 1)
    assert torch.allclose((y * s).sum(1), (x * size).sum(1)) and torch.equal(s.sum(1), size.sum(1))
    assert torch.equal(y[:, :protected], x[:, :protected]) and torch.equal(s[:, :protected], size[:, :protected])


@pytest.mark.parametrize("r", [1, 5, 18])
def test_unmerge_gives_every_position_its_groups_weighted_mean(r):
    metric, x, size = _inputs()
    merge, unmerge = bipartite_soft_matching(metric, r, protected=1)
    y, s = merge_wavg(merge, x, size)
    groups = group_index(unmerge, y.shape[1], x.shape[0])
    assert groups.shape == x.shape[:2] and torch.equal(groups[:, 0], torch.zeros(3, dtype=torch.long))
    expected, den = _group_means(x, size, groups, y.shape[1])
    assert torch.allclose(y, expected) and torch.equal(s, den)
    full = unmerge(y)
    assert full.shape == x.shape
    assert torch.equal(full, y.gather(1, groups[..., None].expand(-1, -1, 8)))
    # groups are the ones merge made: every output token gathers >= 1 input, exactly r tokens disappeared
    counts = torch.zeros(3, y.shape[1]).scatter_add_(1, groups, torch.ones(groups.shape))
    assert (counts >= 1).all() and (counts.sum(1) == x.shape[1]).all()


def test_identical_tokens_are_the_first_to_merge():
    metric, x, _ = _inputs(b=4, n=21)
    p = 1
    for i, (a, b) in enumerate([(0, 1), (4, 9), (12, 3), (18, 19)]):  # even/odd positions after the prefix
        metric[i, p + b] = metric[i, p + a] * 3.0  # same direction, different norm: cosine 1
        x[i, p + b] = x[i, p + a] + 1.0
    merge, unmerge = bipartite_soft_matching(metric, 1, protected=p)
    y, s = merge_wavg(merge, x)
    groups = group_index(unmerge, y.shape[1], 4)
    for i, (a, b) in enumerate([(0, 1), (4, 9), (12, 3), (18, 19)]):
        assert groups[i, p + a] == groups[i, p + b]
        assert s[i, groups[i, p + a]] == 2 and torch.allclose(y[i, groups[i, p + a]], x[i, p + a] + 0.5)
    assert (s == 2).sum() == 4


def test_bipartite_merges_the_r_most_similar_edges():
    metric, _, _ = _inputs(b=2, n=30)
    _, unmerge = bipartite_soft_matching(metric, 6, protected=0)
    groups = group_index(unmerge, 24, 2)
    m = torch.nn.functional.normalize(metric, dim=-1)
    best = (m[:, ::2] @ m[:, 1::2].transpose(1, 2)).max(-1).values  # (B, 15) per source
    merged = groups[:, ::2].unsqueeze(-1).eq(groups[:, 1::2].unsqueeze(1)).any(-1)  # source shares a group
    for i in range(2):
        assert merged[i].sum() == 6
        assert best[i][merged[i]].min() >= best[i][~merged[i]].max()


@pytest.mark.parametrize("seed", range(6))
def test_budget_is_met_exactly_for_any_grid(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(12):
        h, w = (int(v) for v in torch.randint(1, 30, (2,), generator=g))
        k = int(torch.randint(1, h * w + 1, (1,), generator=g))
        metric, x, size = _inputs(b=2, n=h * w, seed=seed)
        merge, unmerge = budget_soft_matching(metric, (h, w), k)
        y, s = merge_wavg(merge, x, size)
        assert y.shape == (2, k, 8), (h, w, k)
        assert torch.allclose((y * s).sum(1), (x * size).sum(1)) and torch.equal(s.sum(1), size.sum(1))
        groups = group_index(unmerge, k, 2)
        assert torch.allclose(unmerge(y), _group_means(x, size, groups, k)[0].gather(
            1, groups[..., None].expand(-1, -1, 8)))


def test_budget_stride_is_the_smallest_that_fits_and_anchors_one_per_cell():
    for h, w, k in [(14, 14, 64), (27, 27, 256), (64, 64, 256), (5, 9, 7), (1, 40, 3), (16, 16, 256)]:
        s = budget_stride(h, w, k)
        cells = math.ceil(h / s) * math.ceil(w / s)
        assert cells <= k and (s == 1 or math.ceil(h / (s - 1)) * math.ceil(w / (s - 1)) > k)
        a = cell_anchors(h, w, s)
        assert len(a) == cells == len(set(a.tolist()))
        rows, cols = a // w, a % w
        assert torch.equal(torch.unique(rows // s), torch.arange(math.ceil(h / s)))
        assert torch.equal(torch.unique(cols // s), torch.arange(math.ceil(w / s)))


def test_budget_output_keeps_raster_order_of_anchors():
    # with a budget of N - 1 exactly one source merges (into a cell anchor); all else keeps raster order
    h, w = 6, 7
    metric, _, _ = _inputs(b=2, n=h * w)
    _, unmerge = budget_soft_matching(metric, (h, w), h * w - 1)
    groups = group_index(unmerge, h * w - 1, 2)
    anchors = set(cell_anchors(h, w, budget_stride(h, w, h * w - 1)).tolist())
    for g in groups:
        counts = torch.bincount(g)
        moved = [i for i in range(h * w) if counts[g[i]] == 2 and i not in anchors]
        assert len(moved) == 1
        keep = torch.ones(h * w, dtype=torch.bool)
        keep[moved[0]] = False
        assert torch.equal(g[keep], torch.arange(h * w - 1))


def test_budget_identical_source_and_destination_merge_first():
    h, w = 6, 6
    metric, _, _ = _inputs(b=1, n=h * w)
    dst = int(cell_anchors(h, w, budget_stride(h, w, 35))[2])
    src = dst + 1 if dst + 1 < h * w else dst - 1
    metric[0, src] = metric[0, dst]
    _, unmerge = budget_soft_matching(metric, (h, w), 35)
    groups = group_index(unmerge, 35, 1)
    assert groups[0, src] == groups[0, dst]


def test_budget_errors_name_the_problem():
    metric = torch.randn(1, 12, 4)
    with pytest.raises(ValueError, match=r"num_tokens must be in \[1, 12\] for a 3x4 grid, got 13"):
        budget_soft_matching(metric, (3, 4), 13)
    with pytest.raises(ValueError, match="grid is 3x3"):
        budget_soft_matching(metric, (3, 3), 4)


def test_schedules():
    assert merge_schedule(12, 8) == [8] * 12
    dec = merge_schedule(12, 8, "decreasing")
    assert dec[0] == 16 and dec[-1] == 0 and all(a >= b for a, b in zip(dec, dec[1:]))
    assert abs(sum(dec) - 8 * 12) <= 6
    assert merge_schedule(1, 5, "decreasing") == [5]
    with pytest.raises(ValueError, match="schedule: must be one of constant, decreasing, got 'cosine'"):
        merge_schedule(4, 2, "cosine")
    with pytest.raises(ValueError, match=r"tome.r: must be an integer >= 0, got -1"):
        tome.TokenMergeConfig(r=-1)
    with pytest.raises(ValueError, match="tome.num_tokens: must be an integer >= 1, got 0"):
        tome.TokenMergeConfig(num_tokens=0)
    # tokens_per_layer follows the clamp of bipartite_soft_matching step by step
    n, p, sched = 204, 8, merge_schedule(12, 16)
    left = tokens_per_layer(n, sched, p)
    metric = torch.randn(1, n, 4)
    for want in left:
        merge, _ = bipartite_soft_matching(metric, 16, p)
        metric = merge(metric)
        assert metric.shape[1] == want
    assert left[-1] > p
