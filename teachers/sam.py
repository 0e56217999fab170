"""SAM teachers through segment_anything: the image encoder of vit_b / vit_l / vit_h.

SAM runs on a fixed square canvas (1024 px for the released models) with its own convention, followed here:
the image is resized so that its longest side fills the canvas (`ResizeLongestSide.get_preprocess_shape`,
bilinear with antialiasing), normalized with SAM's pixel mean/std, and zero-padded at the bottom and the right
(`Sam.preprocess`). `valid_region(h, w)` says which top-left part of the canvas, in pixels and in feature
cells, holds the image, so that callers (mosaic, grid matching) can crop the padding away. A square input,
which is what the training loop passes (`resolution_for` returns the canvas), fills the whole canvas.

summary: none (SAM has no global token). features, chosen by `options.features`:
    neck      the image encoder's output, (B, out_chans = 256, 64, 64) at 1024: what SAM's mask decoder reads;
    pre_neck  the ViT's last block output before the neck, (B, embed_dim, 64, 64).

Weights: `pretrained` None -> the official checkpoint of the variant, taken from the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`) or downloaded from Meta's URL when online; a local `.pth` / `.safetensors`
file -> that file (a full SAM checkpoint, whose `image_encoder.` entries are used, or an encoder-only state
dict); False -> random initialisation. Checkpoints are read with `torch.load(weights_only=True)`.
`arch` overrides `ImageEncoderViT`'s constructor arguments (e.g. a tiny encoder with a 128 px canvas).

References: Kirillov et al., Segment Anything (2023).
"""
from __future__ import annotations

import inspect
import os
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from teachers._weights import hub_offline, local_path, reachable, require_local, weights_error
from teachers.base import CanvasRegion, Teacher, TeacherOutput, TeacherSpec, resolve_options
from teachers.registry import register_teacher

DEFAULT_MODEL = "vit_h"  # RADIOv2.5's SAM teacher
# segment_anything/build_sam.py: per-variant encoder sizes and the official checkpoints.
VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
CHECKPOINTS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}
COMMON = dict(img_size=1024, patch_size=16, mlp_ratio=4.0, out_chans=256, qkv_bias=True, use_rel_pos=True,
              window_size=14)
FEATURES = ("neck", "pre_neck")


def _sam_pixel_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """SAM's own pixel mean/std (defaults of `Sam.__init__`, in 0-255 units) rescaled to images in [0, 1]."""
    from segment_anything.modeling import Sam

    params = inspect.signature(Sam.__init__).parameters
    mean = tuple(v / 255.0 for v in params["pixel_mean"].default)
    std = tuple(v / 255.0 for v in params["pixel_std"].default)
    return mean, std


def _read_state_dict(path: str) -> dict[str, Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path, device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise TypeError(f"{path}: expected a state dict, got {type(sd).__name__}")
    prefix = "image_encoder."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _default_checkpoint(label: str, variant: str, how: str) -> str:
    """The official checkpoint in the torch hub cache, downloaded first when online."""
    url = CHECKPOINTS[variant]
    dst = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if os.path.isfile(dst):
        return dst
    tried = f"{url} (cached as {dst})"
    if hub_offline():
        raise weights_error(label, tried, how, FileNotFoundError("not in the cache and offline mode is on "
                                                                 "(HF_HUB_OFFLINE)"))
    if not reachable(url):
        raise weights_error(label, tried, how, ConnectionError("not in the cache and the host is unreachable"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, dst, progress=True)
    except Exception as e:
        raise weights_error(label, tried, how, e) from e
    return dst


class SAMTeacher(Teacher):
    """Wraps segment_anything's `ImageEncoderViT` (the part of SAM a distillation target needs)."""

    def __init__(self, variant: str, pretrained: Any, arch: dict | None = None,
                 input_size: int | None = None, features: str = "neck", label: str = "sam") -> None:
        super().__init__()
        from segment_anything.modeling import ImageEncoderViT

        if variant not in VARIANTS:
            raise ValueError(f"teacher {label!r}: unknown SAM variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if features not in FEATURES:
            raise ValueError(f"teacher {label!r}: options.features must be one of {FEATURES}, got {features!r}")
        kwargs: dict[str, Any] = {**COMMON, **VARIANTS[variant],
                                  "norm_layer": partial(torch.nn.LayerNorm, eps=1e-6)}
        allowed = set(inspect.signature(ImageEncoderViT.__init__).parameters) - {"self", "norm_layer", "act_layer"}
        unknown = sorted(set(arch or {}) - allowed)
        if unknown:
            raise ValueError(f"teacher {label!r}: unknown arch key(s) {unknown}; ImageEncoderViT takes "
                             f"{sorted(allowed)}")
        kwargs.update(arch or {})
        if input_size:
            kwargs["img_size"] = input_size
        how = f"pretrained: /path/to/{os.path.basename(CHECKPOINTS[variant])} (segment_anything checkpoint)"
        path = local_path(pretrained)
        if isinstance(pretrained, str) and not path:
            raise ValueError(f"teacher {label!r}: SAM weights have no tags; `pretrained` must be a local "
                             f"checkpoint path, null (the official {variant} checkpoint) or false, "
                             f"got {pretrained!r}")
        if path:
            require_local(label, path, how)
        elif pretrained is None and not arch:
            path = _default_checkpoint(label, variant, how)
        self.model_name = variant
        self.model = ImageEncoderViT(**kwargs)
        if path:
            try:
                self.model.load_state_dict(_read_state_dict(path), strict=True)
            except Exception as e:
                raise weights_error(label, f"local path {path}", how, e) from e
        self.feature_source = features
        self.patch_size = int(kwargs["patch_size"])
        self.input_size = int(self.model.img_size)
        self.mean, self.std = _sam_pixel_stats()  # type: ignore[assignment]  # three values each
        self.summary_dim = 0
        self.feature_dim = int(kwargs["out_chans"] if features == "neck" else kwargs["embed_dim"])
        self.dynamic_resolution = False

    def check_resolution(self, h: int, w: int) -> None:
        """Any size: the image is resized to the canvas (longest side) and padded."""
        if h < 1 or w < 1:
            raise ValueError(f"teacher {self.name!r}: empty input {h}x{w}")

    def valid_region(self, h: int, w: int) -> CanvasRegion:
        from segment_anything.utils.transforms import ResizeLongestSide

        nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, self.input_size)
        p = self.patch_size
        return CanvasRegion(nh, nw, -(-nh // p), -(-nw // p), self.input_size / max(h, w))

    def _prepare(self, x: Tensor) -> Tensor:
        """ResizeLongestSide: the longest side becomes the canvas size (SAM's size rule, bilinear, antialiased)."""
        region = self.valid_region(*x.shape[-2:])
        if (region.height, region.width) == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, (region.height, region.width), mode="bilinear", align_corners=False,
                             antialias=True)

    def _forward(self, x: Tensor) -> TeacherOutput:
        canvas = self.input_size
        x = F.pad(x, (0, canvas - x.shape[-1], 0, canvas - x.shape[-2]))  # Sam.preprocess: zeros, bottom-right
        if self.feature_source == "neck":
            return TeacherOutput(None, self.model(x))
        captured: list[Tensor] = []
        handle = self.model.neck.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return TeacherOutput(None, captured[0])  # the neck's input: (B, embed_dim, h, w)


@register_teacher("sam")
def _build(spec: TeacherSpec) -> Teacher:
    opts = resolve_options(spec.name, spec.options, {"features": "neck"})
    return SAMTeacher(spec.model or DEFAULT_MODEL, spec.pretrained, spec.arch, spec.input_size,
                      features=opts["features"], label=spec.name)
