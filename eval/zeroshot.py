"""Zero-shot classification through a CLIP-like teacher's text tower.

Image side: a student's `clip`/`siglip` adaptor summary (in that teacher's space) or the teacher's own image
embedding, L2-normalized. Text side: the teacher's text embeddings of prompt templates per class, averaged over
templates and re-normalized (open_clip's `build_zero_shot_classifier`). Prediction: the class of highest cosine.

References: CLIP (Radford et al., 2021) prompt ensembling; AM-RADIO zero-shot through the CLIP adaptor.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

TEXT_TEACHERS = ("clip", "siglip")


def templates_named(name: str) -> Sequence[str | Callable[[str], str]]:
    """`simple` (open_clip's 7 ImageNet templates), `openai` (CLIP's 80), or a text file, one template per line
    with `{}` where the class name goes."""
    from open_clip import zero_shot_metadata as meta

    if name == "simple":
        return list(meta.SIMPLE_IMAGENET_TEMPLATES)
    if name == "openai":
        return list(meta.OPENAI_IMAGENET_TEMPLATES)
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"--templates {name!r}: neither 'simple', 'openai' nor a file")
    lines = [t.strip() for t in path.read_text().splitlines() if t.strip()]
    bad = [t for t in lines if "{}" not in t]
    if not lines or bad:
        raise ValueError(f"{path}: every template needs a '{{}}' for the class name; bad: {bad[:3] or 'file empty'}")
    return lines


def readable_classnames(names: Sequence[str]) -> list[str]:
    """ImageNet synset folders (n01440764, ... 1000 of them) -> open_clip's ImageNet class names; otherwise the
    folder names with '_' and '-' read as spaces."""
    if len(names) == 1000 and all(re.fullmatch(r"n\d{8}", n) for n in names):
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    return [re.sub(r"[_-]+", " ", n) for n in names]


def text_classifier(teacher, classnames: Sequence[str], templates: Sequence[str | Callable],
                    device: str | torch.device = "cpu") -> Tensor:
    """(D, K) L2-normalized class embeddings from `teacher`'s text tower (an open_clip teacher)."""
    from open_clip import build_zero_shot_classifier

    if not hasattr(teacher, "encode_text"):
        raise ValueError(f"teacher {teacher.name!r} has no text tower; zero-shot needs one of {TEXT_TEACHERS}")
    return build_zero_shot_classifier(teacher.model, teacher.tokenizer(), list(classnames), list(templates),
                                      device=device).float()


def zeroshot_predict(image_emb: Tensor, classifier: Tensor) -> Tensor:
    """Cosine logits (N, K) of image embeddings (N, D) against class embeddings (D, K)."""
    if image_emb.shape[1] != classifier.shape[0]:
        raise ValueError(f"image embeddings have width {image_emb.shape[1]} but the text classifier "
                         f"{classifier.shape[0]}: is the adaptor the text tower's teacher?")
    return F.normalize(image_emb.float(), dim=1) @ F.normalize(classifier.float(), dim=0)


def zeroshot_eval(image_emb: Tensor, labels: Tensor, classifier: Tensor) -> dict[str, Any]:
    """Top-1 (and top-5 when there are more than 5 classes) of `zeroshot_predict`; labels -1 are ignored."""
    keep = labels >= 0
    if not keep.any():
        raise ValueError("zero-shot needs labelled samples (label >= 0)")
    logits, y = zeroshot_predict(image_emb[keep], classifier), labels[keep]
    k = classifier.shape[1]
    out = {"top1": float((logits.argmax(1) == y).float().mean()), "num_test": int(len(y)), "num_classes": k,
           "chance": 1.0 / k}
    if k > 5:
        out["top5"] = float((logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean())
    return out
