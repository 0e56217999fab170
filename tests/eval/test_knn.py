import math

import torch

from eval.knn import knn_eval, knn_predict


def test_knn_vote_uses_temperature_weighted_similarities():
    # Query along x. Neighbours: one class-0 point at cos 1.0, two class-1 points at cos 0.8.
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[2.0, 0.0]])
    # k=3: class 0 weight exp(1/T), class 1 weight 2 exp(0.8/T).
    # T=0.07: exp(1/0.07) > 2 exp(0.8/0.07)  (ratio exp(0.2/0.07)/2 ~ 8.7) -> class 0
    assert knn_predict(train, labels, q, k=3, temperature=0.07).item() == 0
    # T=1: exp(1) = 2.72 < 2 exp(0.8) = 4.45 -> class 1
    assert math.exp(1.0) < 2 * math.exp(0.8)
    assert knn_predict(train, labels, q, k=3, temperature=1.0).item() == 1
    # k=1: only the nearest neighbour votes
    assert knn_predict(train, labels, q, k=1, temperature=1.0).item() == 0


def test_knn_eval_accuracy_and_baselines():
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 5
    y_tr = torch.arange(3).repeat(20)
    y_te = torch.arange(3).repeat(5)
    x_tr = centres[y_tr] + torch.randn(60, 8) * 0.1
    x_te = centres[y_te] + torch.randn(15, 8) * 0.1
    r = knn_eval(x_tr, y_tr, x_te, y_te)
    assert r["top1"] == 1.0 and r["num_classes"] == 3 and abs(r["chance"] - 1 / 3) < 1e-9
    # unlabelled samples (label -1) are ignored
    r2 = knn_eval(x_tr, y_tr, x_te, torch.cat([y_te[:-1], torch.tensor([-1])]))
    assert r2["num_test"] == 14
    noise = knn_eval(torch.randn(60, 8), y_tr, torch.randn(15, 8), y_te)
    assert noise["top1"] < 0.8
