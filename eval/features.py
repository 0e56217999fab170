"""Frozen encoders for probing: an exported student or a teacher, behind one interface.

`load_encoder(spec)` accepts:
  - an export directory (has config.json)                 -> the student (radio.load)
  - "EXPORT_DIR::NAME"                                    -> teacher NAME exactly as it was trained with
  - a .yaml / .json file holding a teacher config         -> that teacher
  - a registered teacher name ("clip", "dino_v2", ...)     -> that teacher with its default pretrained weights
  - a dict / TeacherSpec                                  -> that teacher
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

import radio
import teachers as teacher_lib
from radio.data.shards import ErrorCounter, decode_sample, iter_raw_samples, resolve_shards
from radio.data.transforms import eval_transform


class Encoder:
    """A frozen image encoder. `encode` takes images in [0, 1] and returns (summary (B, C), features (B, C, h, w))."""

    name: str = "encoder"
    kind: str = "encoder"

    def input_size(self, requested: int) -> int:
        raise NotImplementedError

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def to(self, device) -> "Encoder":
        raise NotImplementedError


class StudentEncoder(Encoder):
    kind = "student"

    def __init__(self, model, name: str = "student") -> None:
        self.model, self.name = model.eval(), name

    def input_size(self, requested: int) -> int:
        step = self.model.resolution_step
        return max(step, round(requested / step) * step)

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images, feature_fmt="NCHW")
        return out.summary, out.features

    def to(self, device) -> "StudentEncoder":
        self.model.to(device)
        return self


class TeacherEncoder(Encoder):
    kind = "teacher"

    def __init__(self, teacher: teacher_lib.Teacher, name: Optional[str] = None) -> None:
        self.teacher, self.name = teacher, name or teacher.name

    def input_size(self, requested: int) -> int:
        t = self.teacher
        if not t.dynamic_resolution:
            return t.input_size
        return max(t.patch_size, round(requested / t.patch_size) * t.patch_size)

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.teacher(images)
        summary = out.summary if out.summary is not None else out.features.mean(dim=(2, 3))
        return summary, out.features

    def to(self, device) -> "TeacherEncoder":
        self.teacher.to(device)
        return self


def load_encoder(spec: Union[str, dict, teacher_lib.TeacherSpec], name: Optional[str] = None) -> Encoder:
    """Resolve a model spec (see module docstring) to an Encoder."""
    if isinstance(spec, (dict, teacher_lib.TeacherSpec)):
        t = teacher_lib.build(spec)
        return TeacherEncoder(t, name)
    if "::" in spec:
        export_dir, tname = spec.rsplit("::", 1)
        cfg = json.loads((Path(export_dir) / "config.json").read_text())
        specs = {s["name"]: s for s in cfg.get("provenance", {}).get("teacher_specs", [])}
        if tname not in specs:
            raise KeyError(f"{export_dir}: no recorded teacher {tname!r}; recorded: {', '.join(specs) or 'none'}")
        return TeacherEncoder(teacher_lib.build(specs[tname]), name or tname)
    p = Path(spec)
    if p.is_dir():
        return StudentEncoder(radio.load(p), name or p.name)
    if p.is_file() and p.suffix in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(p.read_text())
        return TeacherEncoder(teacher_lib.build(data), name)
    if spec in teacher_lib.available():
        return TeacherEncoder(teacher_lib.build(spec), name)
    raise FileNotFoundError(f"--model {spec!r} is neither an export directory, a teacher config file, "
                            f"EXPORT_DIR::TEACHER, nor a teacher name ({', '.join(teacher_lib.available())})")


@dataclass
class FeatureSet:
    """Extracted features of one split. summary: (N, C); labels: name -> (N,) int64; keys: N sample keys."""

    summary: Tensor
    labels: dict[str, Tensor]
    keys: list[str]
    errors: int = 0


@torch.no_grad()
def extract(encoder: Encoder, shards: str, resolution: int, batch_size: int = 64,
            label_fields: tuple[str, ...] = ("label",), limit: Optional[int] = None, progress: bool = True,
            device: Union[str, torch.device] = "cpu") -> FeatureSet:
    """Encode every sample of `shards` (resized and centre-cropped to the encoder's input size)."""
    urls = resolve_shards(shards, "eval data")
    size = encoder.input_size(resolution)
    tf = eval_transform(size)
    errors = ErrorCounter()
    encoder.to(device)
    summaries: list[Tensor] = []
    labels: dict[str, list[int]] = {f: [] for f in label_fields}
    keys: list[str] = []
    batch: list[Tensor] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"features {encoder.name}", unit="img", leave=False)

    def flush() -> None:
        if batch:
            s, _ = encoder.encode(torch.stack(batch).to(device))
            summaries.append(s.float().cpu())
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

    for raw in iter_raw_samples(urls, handler=errors):
        try:
            sample = decode_sample(raw)
        except Exception as e:
            errors(e)
            continue
        for f in label_fields:
            v = sample.meta.get(f, -1) if f != "label" else sample.label
            labels[f].append(int(v) if isinstance(v, (int, float)) else -1)
        keys.append(sample.key)
        batch.append(tf(sample.image))
        if len(batch) == batch_size:
            flush()
        if limit is not None and len(keys) >= limit:
            break
    flush()
    if bar is not None:
        bar.close()
    if not keys:
        raise ValueError(f"eval data {shards!r}: no readable sample")
    return FeatureSet(torch.cat(summaries), {f: torch.tensor(v) for f, v in labels.items()}, keys, errors.total)


def describe(encoder: Encoder) -> dict[str, Any]:
    if isinstance(encoder, TeacherEncoder):
        return {"kind": "teacher", **encoder.teacher.describe()}
    m = encoder.model
    return {"kind": "student", "embed_dim": m.embed_dim, "patch_size": m.resolution_step,
            "teachers": m.teacher_names()}
