"""k-nearest-neighbour classification on L2-normalized summary features.

Cosine similarity, the k most similar training samples vote with weight exp(sim / T), summed per class;
k = 20, T = 0.07 by default (DINO protocol, as in the RADIO papers).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, k: int = 20, temperature: float = 0.07,
                num_classes: int | None = None, chunk: int = 1024) -> Tensor:
    """Predicted class per test row. train_x: (N, C), train_y: (N,) int64, test_x: (M, C)."""
    if train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"{train_x.shape[0]} training features but {train_y.shape[0]} labels")
    num_classes = int(num_classes or int(train_y.max()) + 1)
    k = min(k, train_x.shape[0])
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    preds = []
    for i in range(0, test_x.shape[0], chunk):
        sim = test_x[i:i + chunk] @ train_x.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[top_idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_eval(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 20,
             temperature: float = 0.07) -> dict[str, Any]:
    """Top-1 accuracy of `knn_predict`, with the chance and majority-class baselines beside it."""
    keep_tr, keep_te = train_y >= 0, test_y >= 0
    train_x, train_y, test_x, test_y = train_x[keep_tr], train_y[keep_tr], test_x[keep_te], test_y[keep_te]
    if len(train_y) == 0 or len(test_y) == 0:
        raise ValueError("kNN needs labelled training and test samples (label >= 0)")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    pred = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes)
    majority = torch.bincount(train_y, minlength=num_classes).argmax()
    return {
        "top1": float((pred == test_y).float().mean()),
        "k": k, "temperature": temperature, "num_train": int(len(train_y)), "num_test": int(len(test_y)),
        "num_classes": num_classes, "chance": 1.0 / num_classes,
        "majority_baseline": float((test_y == majority).float().mean()),
    }
