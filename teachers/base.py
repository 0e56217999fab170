"""The Teacher interface: one frozen vision model that gives a summary vector and a feature grid per image.

Every adapter (open_clip, timm, segment_anything, transformers) implements `_forward` on normalized inputs;
the base class owns preprocessing (mean/std), freezing, autocast on GPUs and the output contract.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from radio.schema import SchemaError, unknown_key_errors
from radio.types import float_images


class TeacherOutput(NamedTuple):
    """summary: (B, C_summary) or None for a teacher without one; features: (B, C, h, w) patch grid."""

    summary: Tensor | None
    features: Tensor


class CanvasRegion(NamedTuple):
    """Where an input image lies on the canvas a teacher actually runs on.

    The convention (segment_anything's): the image is resized and placed at the canvas's top-left corner; any
    padding is at the bottom and the right. A teacher that runs on the image as given has the whole canvas.

    Attributes:
        height, width: pixels of the (resized) image on the canvas.
        grid_height, grid_width: feature cells, counted from the top-left cell, that hold image pixels: crop a
            (B, C, h, w) feature grid to `features[..., :grid_height, :grid_width]` to drop the padding. On a
            padded canvas (SAM) a cell on the image's border may be part padding (ceil of pixels / patch size);
            a teacher without padding has floor(pixels / patch size) cells.
        scale: canvas pixels per input pixel.
    """

    height: int
    width: int
    grid_height: int
    grid_width: int
    scale: float


@dataclass
class TeacherSpec:
    """How to build one teacher.

    Args:
        name: registered teacher name (clip, siglip, dino_v2, sam, hf, ...); see `teachers.available()`.
        model: the library's model name (hub name), or None for the family's default.
        pretrained: a weight tag or a local checkpoint path; None means the family's default weights; False
            means random initialisation (tests, offline demos).
        arch: architecture overrides for a custom (e.g. tiny) configuration of the same model class; implies
            random initialisation unless `pretrained` is a local path.
        input_size: resolution the teacher runs at when it has a fixed one (default: its native size).
        seed: seed for random initialisation, so that a random teacher is rebuilt identically.
        options: family-specific options, checked by the family (unknown keys are an error), e.g.
            sam: {features: neck | pre_neck}; hf: {dynamic_resolution, trust_remote_code, mean, std}.
    """

    name: str
    model: str | None = None
    pretrained: str | bool | None = None
    arch: dict[str, Any] | None = None
    input_size: int | None = None
    seed: int = 0
    options: dict[str, Any] | None = None


class Teacher(nn.Module):
    """A frozen teacher. Call it with images in [0, 1], (B, 3, H, W); it normalizes them itself (uint8 images are
    read as 0-255 pixels; other integer dtypes are refused: radio.types.float_images).

    Attributes set by adapters:
        name: the registered name; model_name: the library's model name.
        patch_size: pixels per feature cell; input_size: native resolution.
        mean, std: the teacher's own preprocessing.
        summary_dim: width of the summary vector (0 when `has_summary` is False); feature_dim: feature width.
        dynamic_resolution: True when the teacher runs at any multiple of its patch size.
    """

    name: str = "teacher"
    model_name: str = ""
    patch_size: int = 16
    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    summary_dim: int = 0
    feature_dim: int = 0
    dynamic_resolution: bool = False
    use_autocast: bool = True
    spec: TeacherSpec  # set by teachers.registry.build_teacher
    _mean: Tensor  # buffers registered by `freeze`
    _std: Tensor

    @property
    def has_summary(self) -> bool:
        return self.summary_dim > 0

    @property
    def device(self) -> torch.device:
        """Where the teacher runs (its preprocessing buffers' device; `freeze` registers them)."""
        return self._mean.device

    def freeze(self) -> Teacher:
        """No gradients, eval mode for good; registers the preprocessing buffers."""
        self.requires_grad_(False)
        self.register_buffer("_mean", torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_std", torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        return super().train(False)

    def train(self, mode: bool = True) -> Teacher:  # noqa: ARG002 - teachers stay in eval mode
        return super().train(False)

    def resolution_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Input size (H, W) at which the teacher's feature grid equals `grid`, or its fixed input size."""
        if self.dynamic_resolution:
            return grid[0] * self.patch_size, grid[1] * self.patch_size
        return self.input_size, self.input_size

    def feature_grid(self, h: int, w: int) -> tuple[int, int]:
        """Feature cells (h', w') of an (h, w) input: floor(size / patch), as a strided patch embedding gives."""
        return h // self.patch_size, w // self.patch_size

    def valid_region(self, h: int, w: int) -> CanvasRegion:
        """Region of the canvas that holds an (h, w) input (see CanvasRegion): the whole input, whose feature
        grid is floor(size / patch) (a fixed-size teacher whose size is not a multiple of its patch, such as
        SigLIP-SO400M-14-384, leaves its last size % patch pixel rows and columns out of every cell)."""
        return CanvasRegion(h, w, *self.feature_grid(h, w), 1.0)

    def check_resolution(self, h: int, w: int) -> None:
        """A dynamic teacher takes any multiple of its patch size; a fixed-size teacher exactly its input size,
        a multiple of the patch or not (SigLIP-SO400M-14 at 384: 27 x 27 cells of 14 px)."""
        if not self.dynamic_resolution:
            if (h, w) != (self.input_size, self.input_size):
                raise ValueError(f"teacher {self.name!r} runs only at {self.input_size}x{self.input_size}, "
                                 f"got {h}x{w}")
            return
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"teacher {self.name!r}: input {h}x{w} is not a multiple of its patch size "
                             f"{self.patch_size}")

    def _prepare(self, x: Tensor) -> Tensor:
        """Geometric preprocessing on images in [0, 1] before normalization (e.g. SAM's resize); default none."""
        return x

    def _forward(self, x: Tensor) -> TeacherOutput:
        """Run the wrapped model on normalized images; implemented by each adapter."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: Tensor) -> TeacherOutput:
        """Images in [0, 1], (B, 3, H, W) -> TeacherOutput(summary (B, C_s) or None, features (B, C, h, w))."""
        self.check_resolution(*x.shape[-2:])
        x = self._prepare(float_images(x, f"teacher {self.name!r}").float())
        x = (x - self._mean) / self._std
        on_gpu = x.is_cuda
        if on_gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu and self.use_autocast):
            out = self._forward(x)
        summary = out.summary.float() if out.summary is not None else None
        return TeacherOutput(summary, out.features.float())

    def describe(self) -> dict[str, Any]:
        """Metadata: what a cache or an export records about this teacher."""
        return {
            "name": self.name, "model": self.model_name, "patch_size": self.patch_size,
            "input_size": self.input_size, "summary_dim": self.summary_dim, "feature_dim": self.feature_dim,
            "dynamic_resolution": self.dynamic_resolution, "mean": list(self.mean), "std": list(self.std),
        }


def resolve_options(teacher: str, given: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """A family's options: `defaults` updated by `given`; an unknown key is a SchemaError listing the valid
    ones."""
    given = dict(given or {})
    errors = unknown_key_errors(f"teacher {teacher!r} options", given, defaults)
    if errors:
        raise SchemaError(errors)
    return {**defaults, **given}
