"""Fidelity of a student's adaptors to its teachers across resolutions (mode switching).

Per teacher and student resolution r (a multiple of the student's patch size): the student runs at r x r and maps
its tokens through the teacher's adaptor (into the teacher's own space); a dense teacher runs at the resolution
that gives the same patch grid (r x p_teacher / p_student), a fixed-size teacher (CLIP-like) at its native size;
teacher features are resized to the student grid as the training validation does (radio.data.transforms).
Over all images and positions, with the training validation's metric (radio.fidelity.FidelityMetric):
    fidelity = mean_c Var(teacher_c) / MSE(student, teacher)     (higher is better; 1 = predicting the means)
    cos_error = 1 - mean cosine(student, teacher) over positions, summary_cos_error likewise on summaries.
A student that mode-switches holds fidelity at its training resolutions and loses it elsewhere.

References: RADIOv2.5 (Heinrich et al., 2024), mode switching across resolutions; AM-RADIO adaptors.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from radio.data.transforms import eval_transform, resize_grid, resize_images
from radio.fidelity import FidelityMetric, plot_fidelity


def default_resolutions(step: int, patches: Sequence[int] = (4, 6, 8, 12, 16, 24, 32)) -> list[int]:
    """Student resolutions in patch steps: step x {4, 6, 8, 12, 16, 24, 32} (64 ... 512 px at patch 16)."""
    return [step * p for p in patches]


@torch.no_grad()
def fidelity_sweep(model, teachers: dict[str, Any], images: Sequence[Image.Image], resolutions: Iterable[int],
                   batch_size: int = 16, device: str | torch.device = "cpu",
                   progress: bool = True) -> dict[str, dict[str, Any]]:
    """Fidelity of `model`'s adaptors to `teachers` (name -> Teacher) at each resolution.

    Returns: teacher -> {"resolutions": [r...], "fidelity": [...], "cos_error": [...], "mse": [...],
    "summary_cos_error": [...] (teachers with a summary)}.
    """
    step = model.resolution_step
    resolutions = list(resolutions)
    bad = [r for r in resolutions if r % step or r <= 0]
    if bad:
        raise ValueError(f"resolutions {bad} are not positive multiples of the student's patch size {step}")
    missing = sorted(set(teachers) - set(model.teacher_names()))
    if missing:
        raise ValueError(f"the student has no adaptor for teacher(s) {missing}; it has {model.teacher_names()}")
    model.to(device).eval()
    for t in teachers.values():
        t.to(device)
    out: dict[str, dict[str, Any]] = {n: {"resolutions": resolutions} for n in teachers}
    it = resolutions
    if progress:
        from tqdm import tqdm

        it = tqdm(resolutions, desc="fidelity", unit="res", leave=False)
    for r in it:
        tf = eval_transform(r)
        metrics: dict[str, FidelityMetric] = {}
        for i in range(0, len(images), batch_size):
            x = torch.stack([tf(im) for im in images[i:i + batch_size]]).to(device)
            pred = model(x, adaptors=list(teachers), feature_fmt="NCHW")
            grid = (r // step, r // step)
            for name, teacher in teachers.items():
                target = teacher(resize_images(x, teacher.resolution_for(grid)))
                features = resize_grid(target.features.float(), grid)
                if name not in metrics:
                    metrics[name] = FidelityMetric(features.shape[1]).to(device)
                metrics[name].update(pred[name].features.float(), features, pred[name].summary,
                                     target.summary)
        for name, m in metrics.items():
            for k, v in m.results().items():
                out[name].setdefault(k, []).append(float(v))
    return out


def plot_sweeps(results: dict[str, dict[str, dict[str, Any]]], out_png: str | Path) -> Path:
    """results: student -> teacher -> `fidelity_sweep` result; one line per (student, teacher) in the fidelity
    plot (radio.fidelity.plot_fidelity)."""
    curves = {teacher if len(results) == 1 else f"{student} -> {teacher}": r
              for student, per_teacher in results.items() for teacher, r in per_teacher.items()}
    return plot_fidelity(curves, out_png)
