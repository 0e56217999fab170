"""Frozen encoders for probing: an exported student or a teacher, behind one interface.

`load_encoder(spec)` accepts:
  - an export directory (has config.json)                 -> the student (radio.load)
  - "EXPORT_DIR::NAME"                                    -> teacher NAME as it was trained with (no option that
                                                             runs code: teachers.untrusted_spec)
  - a .yaml / .json file holding a teacher config         -> that teacher
  - a registered teacher name ("clip", "dino_v2", ...)     -> that teacher with its default pretrained weights
  - a dict / TeacherSpec                                  -> that teacher
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

import radio
import teachers as teacher_lib
from radio.data.transforms import eval_transform

if TYPE_CHECKING:
    from eval.datasets import Split


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved or does not support what was asked (names the model)."""


class Encoder:
    """A frozen image encoder on images in [0, 1].

    `encode` returns (summary (B, C_s), features (B, C_f, h, w)); `encode_tokens` returns the output tokens a
    VLM sees, (B, N, C_f).
    """

    name: str = "encoder"
    kind: str = "encoder"

    def input_size(self, requested: int) -> int:
        raise NotImplementedError

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def encode_tokens(self, images: Tensor) -> Tensor:
        return self.encode(images)[1].flatten(2).transpose(1, 2)

    def to(self, device) -> Encoder:
        raise NotImplementedError


def _snap(requested: int, step: int) -> int:
    return max(step, round(requested / step) * step)


class StudentEncoder(Encoder):
    """An exported student's backbone. `num_tokens` (VLM token budget) is passed to the model only when set."""

    kind = "student"

    def __init__(self, model, name: str = "student", num_tokens: int | None = None,
                 source: str | None = None) -> None:
        self.model, self.name = model.eval(), name
        self.source = source or f"the provenance of {name!r}"  # the file the provenance was read from
        self.num_tokens: int | None = None
        if num_tokens is not None:
            self.set_num_tokens(num_tokens)

    @property
    def teacher_specs(self) -> dict[str, dict[str, Any]]:
        """The teachers recorded in the export's provenance, by name, as recorded: a file radio did not get from
        the user, so build them only through `recorded_teacher`."""
        return _recorded_by_name(getattr(self.model, "provenance", {}), self.source)

    def recorded_teacher(self, name: str) -> teacher_lib.TeacherSpec:
        """The spec of recorded teacher `name` as radio may build it (`checked_recorded_spec`)."""
        return checked_recorded_spec(getattr(self.model, "provenance", {}), name, self.source)

    def set_num_tokens(self, num_tokens: int) -> None:
        if "num_tokens" not in inspect.signature(self.model.forward).parameters:
            raise ModelSpecError(f"{self.name}: this model's forward() does not accept num_tokens (output token "
                             f"budget from token merging); leave --num-tokens out or use a radio build that has it")
        self.num_tokens = int(num_tokens)

    def input_size(self, requested: int) -> int:
        return _snap(requested, self.model.resolution_step)

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images, feature_fmt="NCHW")
        return out.summary, out.features

    @torch.no_grad()
    def encode_tokens(self, images: Tensor) -> Tensor:
        if self.num_tokens is None:
            return self.model(images).features
        return self.model(images, num_tokens=self.num_tokens).features

    def to(self, device) -> StudentEncoder:
        self.model.to(device)
        return self


class AdaptorEncoder(StudentEncoder):
    """A student seen through one teacher's adaptor: summary and features in that teacher's space."""

    kind = "student-adaptor"

    def __init__(self, student: StudentEncoder, adaptor: str) -> None:
        if adaptor not in student.model.teacher_names():
            names = ", ".join(student.model.teacher_names())
            raise ModelSpecError(f"{student.name}: no adaptor {adaptor!r}; it has {names}")
        super().__init__(student.model, f"{student.name}:{adaptor}", source=student.source)
        self.adaptor = adaptor

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images, adaptors=[self.adaptor], feature_fmt="NCHW")[self.adaptor]
        summary = out.summary if out.summary is not None else out.features.mean(dim=(2, 3))
        return summary, out.features


class TeacherEncoder(Encoder):
    kind = "teacher"

    def __init__(self, teacher: teacher_lib.Teacher, name: str | None = None) -> None:
        self.teacher, self.name = teacher, name or teacher.name

    def input_size(self, requested: int) -> int:
        t = self.teacher
        return _snap(requested, t.patch_size) if t.dynamic_resolution else t.input_size

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.teacher(images)
        summary = out.summary if out.summary is not None else out.features.mean(dim=(2, 3))
        return summary, out.features

    def to(self, device) -> TeacherEncoder:
        self.teacher.to(device)
        return self


def export_provenance(export_dir: str | Path) -> dict[str, Any]:
    """The provenance block of an export directory, native or `--format hf` (radio.export.read_export)."""
    from radio.export import read_export

    return dict(read_export(export_dir).raw.get("provenance") or {})


def _recorded_by_name(provenance: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """provenance.teacher_specs by name, as recorded (each a mapping with a string `name`, else an error)."""
    specs = provenance.get("teacher_specs") or []
    if not isinstance(specs, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                              for s in specs):
        raise ModelSpecError(f"{source}: provenance.teacher_specs must be a list of teacher specs, each with a name")
    return {s["name"]: s for s in specs}


def checked_recorded_spec(provenance: dict[str, Any], name: str, source: str) -> teacher_lib.TeacherSpec:
    """Recorded teacher `name` of an export's provenance, read from `source`, as radio may build it.

    The provenance is a file the user did not write: the spec goes through `teachers.untrusted_spec`, so that no
    code-running option (hf's trust_remote_code) reaches the build; a spec that turns one on is a ModelSpecError
    naming the file and the key.
    """
    specs = _recorded_by_name(provenance, source)
    if name not in specs:
        raise ModelSpecError(f"{source}: no recorded teacher {name!r}; recorded: {', '.join(specs) or 'none'}")
    where = f"{source}: provenance.teacher_specs[{list(specs).index(name)}]"
    try:
        return teacher_lib.untrusted_spec(specs[name], where)
    except teacher_lib.UntrustedSpecError as e:
        raise ModelSpecError(str(e)) from e


def provenance_file(export_dir: str | Path) -> str:
    """The file an export's provenance is read from (radio.export's config.json, either layout)."""
    from radio.export import CONFIG_NAME

    return str(Path(export_dir) / CONFIG_NAME)


def recorded_teacher_names(export_dir: str | Path) -> list[str]:
    """The names of the teachers recorded in the provenance of the export at `export_dir`."""
    return list(_recorded_by_name(export_provenance(export_dir), provenance_file(export_dir)))


def recorded_teacher(export_dir: str | Path, name: str) -> teacher_lib.TeacherSpec:
    """The spec of teacher `name` as the export at `export_dir` was trained with (its provenance), as radio may
    build it (`checked_recorded_spec`: no code-running options)."""
    return checked_recorded_spec(export_provenance(export_dir), name, provenance_file(export_dir))


def load_encoder(spec: str | dict | teacher_lib.TeacherSpec, name: str | None = None) -> Encoder:
    """Resolve a model spec (see module docstring) to an Encoder."""
    if isinstance(spec, (dict, teacher_lib.TeacherSpec)):
        t = teacher_lib.build(spec)
        return TeacherEncoder(t, name)
    if "::" in spec:
        export_dir, tname = spec.rsplit("::", 1)
        return TeacherEncoder(teacher_lib.build(recorded_teacher(export_dir, tname)), name or tname)
    p = Path(spec)
    if p.is_dir():
        return StudentEncoder(radio.load(p), name or p.name, source=provenance_file(p))
    if p.is_file() and p.suffix in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(p.read_text())
        return TeacherEncoder(teacher_lib.build(data), name)
    if spec in teacher_lib.available():
        return TeacherEncoder(teacher_lib.build(spec), name)
    raise FileNotFoundError(f"--model {spec!r} is neither an export directory, a teacher config file, "
                            f"EXPORT_DIR::TEACHER, nor a teacher name ({', '.join(teacher_lib.available())})")


@dataclass
class FeatureBank:
    """Frozen features of one split, one row per sample.

    summary: (N, C_s) float32; pooled: (N, C_f) float32, the mean of the patch features; dense: (N, C_f, h, w)
    float16 patch grid, or None; labels: field -> (N,) int64 (-1 = unlabelled); masks: (N, H, W) int64 class
    indices at `mask_size` (IGNORE = -1), or None; keys: N sample keys; skipped: corrupt samples skipped.
    """

    summary: Tensor
    pooled: Tensor
    labels: dict[str, Tensor]
    keys: list[str]
    dense: Tensor | None = None
    masks: Tensor | None = None
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.keys)


def mask_transform(size: int):
    """The geometry of `eval_transform(size)` (short side to `size`, centre crop) with nearest sampling."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    return T.Compose([T.Resize(size, interpolation=InterpolationMode.NEAREST_EXACT), T.CenterCrop(size)])


@torch.no_grad()
def extract_split(encoder: Encoder, split: Split, resolution: int, batch_size: int = 64, dense: bool = False,
                  masks: bool = False, mask_size: int | None = None, limit: int | None = None,
                  progress: bool = True, device: str | torch.device = "cpu") -> FeatureBank:
    """Encode every sample of `split` (resized and centre-cropped to the encoder's input size).

    Args:
        dense: keep the patch grids (segmentation probe). masks: read the masks, resized to `mask_size`
            (default `resolution`) with the images' crop, so every model is scored on the same pixels.
        limit: stop after this many samples.
    """
    import numpy as np

    size = encoder.input_size(resolution)
    tf, mtf = eval_transform(size), mask_transform(mask_size or resolution)
    encoder.to(device)
    out: dict[str, list[Tensor]] = {"summary": [], "pooled": [], "dense": [], "masks": []}
    labels: dict[str, list[int]] = {f: [] for f in split.label_fields}
    keys: list[str] = []
    batch: list[Tensor] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"features {encoder.name} {split.name}", unit="img", leave=False)

    def flush() -> None:
        if batch:
            s, f = encoder.encode(torch.stack(batch).to(device))
            out["summary"].append(s.float().cpu())
            out["pooled"].append(f.float().mean(dim=(2, 3)).cpu())
            if dense:
                out["dense"].append(f.half().cpu())
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

    for rec in split.records(masks=masks):
        for f in labels:
            labels[f].append(rec.labels.get(f, -1))
        if masks:
            m = torch.from_numpy(np.ascontiguousarray(rec.mask)).float()[None]  # nearest resize of exact integers
            out["masks"].append(mtf(m)[0].long())
        keys.append(rec.key)
        batch.append(tf(rec.image))
        if len(batch) == batch_size:
            flush()
        if limit is not None and len(keys) >= limit:
            break
    flush()
    if bar is not None:
        bar.close()
    if not keys:
        raise ValueError(f"{split}: no readable sample")
    return FeatureBank(torch.cat(out["summary"]), torch.cat(out["pooled"]),
                       {f: torch.tensor(v, dtype=torch.long) for f, v in labels.items()}, keys,
                       dense=torch.cat(out["dense"]) if dense else None,
                       masks=torch.stack(out["masks"]) if masks else None,
                       skipped=getattr(split, "skipped", 0))


def describe(encoder: Encoder) -> dict[str, Any]:
    """What the report says about a model: its kind and architecture facts."""
    if isinstance(encoder, TeacherEncoder):
        return {"kind": "teacher", **encoder.teacher.describe()}
    if isinstance(encoder, StudentEncoder):
        m = encoder.model
        out = {"kind": "student", "embed_dim": m.embed_dim, "patch_size": m.resolution_step,
               "teachers": m.teacher_names()}
        return out | ({"num_tokens": encoder.num_tokens} if encoder.num_tokens is not None else {})
    return {"kind": encoder.kind}
