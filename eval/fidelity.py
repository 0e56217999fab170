"""Fidelity of a student's adaptors to its teachers across resolutions (mode switching).

Per teacher and student resolution r (a multiple of the student's patch size): the student runs at r x r and maps
its tokens through the teacher's adaptor (into the teacher's own space); a dense teacher runs at the resolution
that gives the same patch grid (r x p_teacher / p_student), a fixed-size teacher (CLIP-like) at its native size;
teacher features are resized to the student grid as the training validation does (radio.data.transforms).
Over all images and positions:
    fidelity = mean_c Var(teacher_c) / MSE(student, teacher)     (higher is better; 1 = predicting the means)
    cos_error = 1 - mean cosine(student, teacher) over positions, summary_cos_error likewise on summaries.
A student that mode-switches holds fidelity at its training resolutions and loses it elsewhere.

References: RADIOv2.5 (Heinrich et al., 2024), mode switching across resolutions; AM-RADIO adaptors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from radio.data.transforms import eval_transform, resize_grid, resize_images


@dataclass
class FidelityStats:
    """Streaming sums for one (teacher, resolution): per-channel moments of the teacher, squared error, cosines."""

    sum_t: Optional[Tensor] = None
    sum_t2: Optional[Tensor] = None
    sse: float = 0.0
    count: int = 0
    cos_sum: float = 0.0
    summary_cos: list[float] = field(default_factory=list)

    def update(self, student: Tensor, teacher: Tensor) -> None:
        """student, teacher: (B, C, h, w) on the same grid, float32."""
        c = teacher.shape[1]
        t = teacher.transpose(0, 1).reshape(c, -1).double()
        s = student.transpose(0, 1).reshape(c, -1).double()
        if self.sum_t is None:
            self.sum_t, self.sum_t2 = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        self.sum_t += t.sum(1)
        self.sum_t2 += (t * t).sum(1)
        self.sse += float(((s - t) ** 2).sum())
        self.count += t.shape[1]
        self.cos_sum += float(F.cosine_similarity(s, t, dim=0).sum())

    def result(self) -> dict[str, float]:
        c = self.sum_t.shape[0]
        mean = self.sum_t / self.count
        var = (self.sum_t2 / self.count - mean * mean).clamp_min(0).mean()
        mse = self.sse / (self.count * c)
        out = {"fidelity": float(var / max(mse, 1e-12)), "mse": mse, "teacher_var": float(var),
               "cos_error": 1.0 - self.cos_sum / self.count}
        if self.summary_cos:
            out["summary_cos_error"] = 1.0 - sum(self.summary_cos) / len(self.summary_cos)
        return out


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
        stats = {n: FidelityStats() for n in teachers}
        for i in range(0, len(images), batch_size):
            x = torch.stack([tf(im) for im in images[i:i + batch_size]]).to(device)
            pred = model(x, adaptors=list(teachers), feature_fmt="NCHW")
            grid = (r // step, r // step)
            for name, teacher in teachers.items():
                target = teacher(resize_images(x, teacher.resolution_for(grid)))
                stats[name].update(pred[name].features.float(), resize_grid(target.features.float(), grid))
                if pred[name].summary is not None and target.summary is not None:
                    cos = F.cosine_similarity(pred[name].summary.float(), target.summary.float(), dim=1)
                    stats[name].summary_cos.extend(cos.tolist())
        for name, s in stats.items():
            for k, v in s.result().items():
                out[name].setdefault(k, []).append(v)
    return out
