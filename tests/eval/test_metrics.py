"""Each metric on inputs small enough to compute by hand."""
import math

import pytest
import torch

from eval.heads import GridResult
from eval.linear import linear_probe, pooled_inputs
from eval.seg import iou_scores, seg_probe
from eval.vlm_data import exact_match, normalize_answer
from eval.zeroshot import zeroshot_eval, zeroshot_predict


def test_miou_by_hand_with_an_ignored_pixel_and_an_absent_class():
    # target (-1 = ignored)      prediction
    #  0  0  1                    0  1  1
    #  1 -1  2                    1  2  0
    target = torch.tensor([[0, 0, 1], [1, -1, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    r = iou_scores(pred, target, num_classes=4)
    # ignored pixel (predicted 2) counts nowhere. class 0: inter 1 (0,0); union {(0,0),(0,1),(1,2)} = 3 -> 1/3
    # class 1: inter 2 ((0,2),(1,0)); union {(0,1),(0,2),(1,0)} = 3 -> 2/3
    # class 2: inter 0; union {(1,2)} = 1 -> 0 ; class 3: in neither -> NaN, left out of the mean
    iou = r["per_class_iou"]
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0.0
    assert math.isnan(iou[3])
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert r["pixel_acc"] == pytest.approx(3 / 5)  # 5 scored pixels, 3 right


def test_exact_match_normalizes_case_whitespace_and_trailing_punctuation():
    assert normalize_answer("  Top-Left. ") == "top-left"
    assert normalize_answer("two\n apples!") == "two apples"
    assert exact_match(["Red.", "blue", " three "], ["red", "green", "three"]) == pytest.approx(2 / 3)
    assert exact_match(["red square"], ["red"]) == 0.0  # exact, not containment
    with pytest.raises(ValueError):
        exact_match(["a"], ["a", "b"])


def test_zeroshot_is_argmax_cosine_against_class_embeddings():
    classifier = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (D=2, K=2): class 0 along x, class 1 along y
    images = torch.tensor([[3.0, 1.0], [1.0, 2.0], [-1.0, 5.0]])
    logits = zeroshot_predict(images, classifier)
    assert torch.allclose(logits[0], torch.tensor([3.0, 1.0]) / math.sqrt(10))
    r = zeroshot_eval(images, torch.tensor([0, 0, 1]), classifier)
    assert r["top1"] == pytest.approx(2 / 3) and r["chance"] == 0.5  # image 1 (1, 2) is nearer class 1
    with pytest.raises(ValueError, match="width"):
        zeroshot_predict(torch.ones(1, 3), classifier)


def test_grid_result_picks_the_best_final_score():
    g = GridResult(["a", "b", "c"], [1e-3, 1e-2, 1e-1], [0.5, float("nan"), 0.7])
    assert g.best == 2 and g.as_dict()["best"] == "c"


def test_linear_probe_separates_clusters_and_sweeps_the_whole_grid():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 3
    y_tr, y_va = torch.arange(4).repeat(30), torch.arange(4).repeat(10)
    summary_tr, summary_va = centres[y_tr] + torch.randn(120, 16), centres[y_va] + torch.randn(40, 16)
    noise_tr, noise_va = torch.randn(120, 8), torch.randn(40, 8)  # "patch_mean": no signal
    r = linear_probe(pooled_inputs(summary_tr, noise_tr), y_tr, pooled_inputs(summary_va, noise_va), y_va,
                     lrs=(1e-3, 1e-1), epochs=15)
    assert r["top1"] > 0.95 and r["best_pooling"] in ("summary", "summary+patch_mean")
    assert len(r["grid"]["heads"]) == 2 * 3
    by_name = {h["name"]: h["score"] for h in r["grid"]["heads"]}
    assert max(v for k, v in by_name.items() if k.startswith("patch_mean")) < 0.6  # noise stays near chance
    assert all(len(h["curve"]) == 15 for h in r["grid"]["heads"])


def test_seg_probe_recovers_classes_written_into_the_features():
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (40, 4, 4)).repeat_interleave(4, 1).repeat_interleave(4, 2)  # (40, 16, 16)
    dense = torch.nn.functional.one_hot(masks[:, ::4, ::4], 3).permute(0, 3, 1, 2).float()  # class per patch
    dense = dense + 0.1 * torch.randn_like(dense)
    masks[:, 0, 0] = -1  # ignored pixels
    r = seg_probe(dense[:30], masks[:30], dense[30:], masks[30:], num_classes=3, lrs=(1e-1,), epochs=15)
    assert r["miou"] > 0.6 > r["majority_miou"]
    assert set(r["per_class_iou"]) == {"0", "1", "2"}
