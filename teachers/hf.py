"""Hugging Face transformers teachers: the vision tower of any `AutoModel` (SigLIP/SigLIP2, DINOv2, CLIP, ...).

`model` is a hub repo id or a local directory (`save_pretrained` layout). For a vision-language repo (its config
has a `vision_config`) only the vision tower is built and loaded, through the vision class transformers maps
that config to (e.g. `SiglipVisionModel`); for a vision model (DINOv2) the model itself.

summary = the model's `pooler_output` (none when it has no pooler); features = `last_hidden_state` without its
prefix tokens (CLS, registers: whatever precedes the h x w patch tokens), as a grid.

Inputs: `pixel_values` (B, 3, H, W) normalized with the repo's image-processor mean/std; for NaFlex models
(SigLIP2 `Siglip2VisionModel`, whose forward takes `spatial_shapes`) the image is cut into patches in the
layout of transformers' `convert_image_to_patches`, all valid, with `spatial_shapes` = (H/p, W/p).

Resolution: models that interpolate their position embedding on their own (DINOv2, NaFlex) run at any multiple
of the patch size; models that need `interpolate_pos_encoding=True` (CLIP, SigLIP) run at their native size
unless `options.dynamic_resolution: true`.

Options: dynamic_resolution (null = as above), trust_remote_code (false; only when you trust the repo's code; a
spec read from an export or a checkpoint may not set it: teachers.untrusted_spec), mean / std (override the
preprocessing, e.g. for a random configuration).
Weights: `pretrained` None -> the repo's weights; a local directory -> that directory; another string -> a hub
revision; False -> random initialisation from the repo's config. `arch` = a config of the same model class,
`{model_type: dinov2, hidden_size: 32, ...}` (AutoConfig.for_model), random unless `pretrained` is a directory.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from teachers._weights import hub_guard, local_path, require_local, weights_error
from teachers.base import Teacher, TeacherOutput, TeacherSpec, resolve_options
from teachers.registry import register_teacher

DEFAULT_MODEL = "google/siglip2-so400m-patch14-384"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPTIONS = {"dynamic_resolution": None, "trust_remote_code": False, "mean": None, "std": None}


def _vision_config(config):
    sub = getattr(config, "vision_config", None)
    return sub if sub is not None else config


def _vision_class(label: str, vcfg, trust_remote_code: bool):
    from transformers import MODEL_MAPPING, AutoModel

    if type(vcfg) in MODEL_MAPPING:
        return MODEL_MAPPING[type(vcfg)]
    if trust_remote_code:
        return AutoModel
    raise ValueError(f"teacher {label!r}: transformers has no model class for config {type(vcfg).__name__}; "
                     f"if the repo ships its own code and you trust it, set options.trust_remote_code: true")


class HFTeacher(Teacher):
    """Wraps a transformers vision model."""

    def __init__(self, source: str, pretrained: Any, arch: dict | None = None, input_size: int | None = None,
                 options: dict | None = None, label: str = "hf") -> None:
        super().__init__()
        from transformers import AutoConfig, ImageProcessingMixin

        opts = resolve_options(label, options, OPTIONS)
        remote = bool(opts["trust_remote_code"])
        path = local_path(pretrained, hub_ids=True)
        revision = pretrained if isinstance(pretrained, str) and not path else None
        src = path or source
        how = f"pretrained: /path/to/local_dir (a save_pretrained / downloaded copy of {source})"
        is_dir = local_path(src, hub_ids=True) is not None
        where = f"local path {src}" if is_dir else f"Hugging Face repo {src}"
        if is_dir:
            require_local(label, src, how)
        load_weights = pretrained is not False and not (arch and pretrained is None)
        if arch:
            arch = dict(arch)
            if "model_type" not in arch:
                raise ValueError(f"teacher {label!r}: arch must name the config's model_type "
                                 f"(e.g. {{model_type: dinov2, hidden_size: 32, ...}})")
            config = AutoConfig.for_model(arch.pop("model_type"), **arch)
        else:
            try:
                with hub_guard():
                    config = AutoConfig.from_pretrained(src, revision=revision, trust_remote_code=remote)
            except Exception as e:
                raise weights_error(label, where, how, e) from e
        vcfg = _vision_config(config)
        cls = _vision_class(label, vcfg, remote)
        mean_std = None
        if load_weights:
            try:
                with hub_guard():
                    self.model = cls.from_pretrained(src, config=vcfg, revision=revision, dtype=torch.float32,
                                                     trust_remote_code=remote)
                    mean_std = _processor_mean_std(ImageProcessingMixin, src, revision)
            except Exception as e:
                raise weights_error(label, where, how, e) from e
        elif cls.__name__ == "AutoModel":
            self.model = cls.from_config(vcfg, trust_remote_code=remote)
        else:
            self.model = cls(vcfg)
        self.model.float().eval()
        self.model_name = src
        vcfg = self.model.config
        self.patch_size = int(_first(vcfg.patch_size))
        params = inspect.signature(self.model.forward).parameters
        self._naflex = "spatial_shapes" in params
        self._interpolate_arg = "interpolate_pos_encoding" in params
        if getattr(vcfg, "image_size", None):
            native = int(_first(vcfg.image_size))
        else:  # NaFlex: a patch budget, no image size
            native = round(getattr(vcfg, "num_patches", 256) ** 0.5) * self.patch_size
        self.input_size = int(input_size or native)
        self._native = native
        dyn = opts["dynamic_resolution"]
        self.dynamic_resolution = bool(dyn) if dyn is not None else (self._naflex or not self._interpolate_arg)
        mean, std = mean_std or IMAGENET
        self.mean = tuple(opts["mean"] or mean)
        self.std = tuple(opts["std"] or std)
        probe = self._probe_dims()
        self.summary_dim = 0 if probe.summary is None else int(probe.summary.shape[-1])
        self.feature_dim = int(probe.features.shape[1])

    def _probe_dims(self) -> TeacherOutput:
        """One forward on a blank image: the widths of the pooler output (if any) and the patch tokens."""
        size = 2 * self.patch_size if (self.dynamic_resolution or self._interpolate_arg) else self._native
        with torch.no_grad():
            return self._forward(torch.zeros(1, 3, size, size))

    def _forward(self, x: Tensor) -> TeacherOutput:
        b, c, hh, ww = x.shape
        p = self.patch_size
        h, w = hh // p, ww // p
        if self._naflex:  # transformers' convert_image_to_patches layout: (h, w, p, p, C) per patch
            patches = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p * p * c)
            out = self.model(pixel_values=patches, spatial_shapes=torch.tensor([[h, w]] * b, device=x.device),
                             pixel_attention_mask=torch.ones(b, h * w, dtype=torch.long, device=x.device))
        else:
            kw = {}
            if self._interpolate_arg and (hh, ww) != (self._native, self._native):
                kw["interpolate_pos_encoding"] = True
            out = self.model(pixel_values=x, **kw)
        tokens = out.last_hidden_state
        patches = tokens[:, tokens.shape[1] - h * w:]
        grid = patches.transpose(1, 2).reshape(b, -1, h, w)
        pooled = getattr(out, "pooler_output", None)
        return TeacherOutput(pooled.flatten(1) if pooled is not None else None, grid)


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, (tuple, list)) else v


def _processor_mean_std(mixin, src: str, revision: str | None):
    """image_mean / image_std of the repo's image processor config, or None when it has none."""
    try:
        d, _ = mixin.get_image_processor_dict(src, revision=revision)
    except OSError:
        return None
    if "image_mean" in d and "image_std" in d:
        return tuple(d["image_mean"]), tuple(d["image_std"])
    return None


@register_teacher("hf", code_running_options=("trust_remote_code",))
def _build(spec: TeacherSpec) -> Teacher:
    return HFTeacher(spec.model or DEFAULT_MODEL, spec.pretrained, spec.arch, spec.input_size, spec.options,
                     label=spec.name)
