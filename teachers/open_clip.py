"""open_clip teachers: CLIP and SigLIP image towers.

summary = the model's image embedding (`encode_image`, unnormalized); features = the patch tokens of the last
block. The text tower stays available for zero-shot (`encode_text`, `tokenizer`).
Defaults follow RADIOv2.5: DFN CLIP ViT-H-14-378 and ViT-SO400M-14-SigLIP-384.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

from torch import Tensor

from teachers._weights import local_path, weights_error
from teachers.base import Teacher, TeacherOutput, TeacherSpec
from teachers.registry import register_teacher

DEFAULTS = {
    "clip": ("ViT-H-14-378-quickgelu", "dfn5b"),
    "siglip": ("ViT-SO400M-14-SigLIP-384", "webli"),
}


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class OpenCLIPTeacher(Teacher):
    """Wraps an open_clip model (CLIP or CustomTextCLIP). `arch` deep-merges into the named model config."""

    def __init__(self, model_name: str, pretrained: Any, arch: Optional[dict] = None,
                 input_size: Optional[int] = None, label: str = "clip") -> None:
        super().__init__()
        import open_clip

        self.model_name = model_name
        base_cfg = open_clip.get_model_config(model_name)
        if base_cfg is None:
            raise ValueError(f"teacher {label!r}: unknown open_clip model {model_name!r}; "
                             f"see open_clip.list_models()")
        kwargs: dict[str, Any] = {}
        if arch:
            merged = _deep_merge(base_cfg, arch)
            kwargs = {k: v for k, v in merged.items() if k != "custom_text"}
        tag = None if pretrained is False else pretrained
        if tag is None and not arch and pretrained is not False:
            tag = DEFAULTS.get(label, (None, None))[1]
        force_size = input_size if input_size and not arch else None
        try:
            self.model = open_clip.create_model(model_name, pretrained=tag or None, force_image_size=force_size,
                                                pretrained_text=False, **kwargs)
        except Exception as e:  # missing download, bad path
            if tag is None:
                raise
            path = local_path(tag)
            raise weights_error(label, path or f"open_clip tag {model_name}:{tag}",
                                f"pretrained: /path/to/open_clip_model.safetensors (for {model_name})", e) from e
        visual = self.model.visual
        self.patch_size = int(_patch_size(visual))
        self.input_size = int(visual.image_size[0] if isinstance(visual.image_size, (tuple, list))
                              else visual.image_size)
        pp = open_clip.get_model_preprocess_cfg(self.model)
        self.mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
        self.summary_dim = int(visual.output_dim)
        self.feature_dim = int(_width(visual))
        self.dynamic_resolution = False

    def _forward(self, x: Tensor) -> TeacherOutput:
        out = self.model.visual.forward_intermediates(x, indices=1, output_fmt="NCHW")
        return TeacherOutput(out["image_features"], out["image_intermediates"][-1])

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.model.encode_text(tokens)

    def tokenizer(self):
        import open_clip

        return open_clip.get_tokenizer(self.model_name)


def _patch_size(visual) -> int:
    if hasattr(visual, "patch_size"):
        ps = visual.patch_size
        return ps[0] if isinstance(ps, (tuple, list)) else ps
    return visual.trunk.patch_embed.patch_size[0]  # timm trunk


def _width(visual) -> int:
    if hasattr(visual, "transformer"):
        return visual.transformer.width
    return visual.trunk.num_features


def _build(label: str):
    def builder(spec: TeacherSpec) -> Teacher:
        model_name = spec.model or DEFAULTS[label][0]
        return OpenCLIPTeacher(model_name, spec.pretrained, spec.arch, spec.input_size, label=label)

    return builder


register_teacher("clip")(_build("clip"))
register_teacher("siglip")(_build("siglip"))
