"""The one fidelity metric (radio.fidelity) that the training validation and `radio eval fidelity` share."""
import pytest
import torch

from radio.fidelity import FidelityMetric, fidelity


def _by_hand(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Var(target) per channel (channels on dim 1, population variance) averaged, over MSE(pred, target)."""
    c = target.shape[1]
    t = target.double().transpose(0, 1).reshape(c, -1)
    return float(t.var(dim=1, unbiased=False).mean() / ((pred.double() - target.double()) ** 2).mean())


def test_streaming_over_batches_equals_one_pass_and_the_definition():
    torch.manual_seed(0)
    t = torch.randn(4, 5, 3, 3) * 2 + 1
    s = t + 0.3 * torch.randn_like(t)
    m = FidelityMetric(5)
    m.update(s[:2], t[:2], s[:2, :, 0, 0], t[:2, :, 0, 0])
    m.update(s[2:], t[2:], s[2:, :, 0, 0], t[2:, :, 0, 0])
    r = m.results()
    assert float(r["fidelity"]) == pytest.approx(_by_hand(s, t), rel=1e-12)
    assert float(fidelity(s, t)) == pytest.approx(_by_hand(s, t), rel=1e-12)
    assert float(r["mse"]) == pytest.approx(float(((s.double() - t.double()) ** 2).mean()), rel=1e-12)
    cos = torch.nn.functional.cosine_similarity(s.double(), t.double(), dim=1)  # (B, h, w): per position
    assert float(r["cos_error"]) == pytest.approx(1 - float(cos.mean()), rel=1e-12)
    summary = torch.nn.functional.cosine_similarity(s[:, :, 0, 0].double(), t[:, :, 0, 0].double(), dim=1)
    assert float(r["summary_cos_error"]) == pytest.approx(1 - float(summary.mean()), rel=1e-12)
    # the training logs float32 copies of fidelity and the cos-errors (no mse / teacher_var)
    out = m.compute()
    assert list(out) == ["fidelity", "cos_error", "summary_cos_error"]
    for k, v in out.items():
        assert v.dtype == torch.float32 and float(v) == pytest.approx(float(r[k]), rel=1e-6)


def test_fixed_points_mean_prediction_is_one_and_a_perfect_one_is_huge_but_finite():
    torch.manual_seed(0)
    t = torch.randn(16, 4, 3, 3) * 2 + 5
    mean_pred = t.mean(dim=(0, 2, 3), keepdim=True).expand_as(t)
    assert float(fidelity(mean_pred, t)) == pytest.approx(1.0, rel=1e-5)
    assert float(fidelity(t + 0.01 * torch.randn_like(t), t)) > 1000
    same = FidelityMetric(4)
    same.update(t, t)
    r = same.results()
    assert float(r["cos_error"]) == pytest.approx(0.0, abs=1e-12) and "summary_cos_error" not in r
    assert torch.isfinite(r["fidelity"]) and float(r["fidelity"]) > 1e20
    summaries = torch.randn(6, 3)  # (B, C) inputs: one row per image
    means = summaries.mean(0, keepdim=True).expand_as(summaries)
    assert float(fidelity(means, summaries)) == pytest.approx(1.0)
