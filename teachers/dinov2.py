"""DINOv2 teachers through timm (`vit_*_patch14_dinov2.lvd142m` and the `reg4` variants).

summary = the CLS token after the final norm; features = the patch tokens (registers dropped) as a grid.
Runs at any resolution that is a multiple of 14. Default follows RADIOv2.5: DINOv2-g/14 with registers.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from teachers._weights import local_path, weights_error
from teachers.base import Teacher, TeacherOutput, TeacherSpec
from teachers.registry import register_teacher

DEFAULT_MODEL = "vit_giant_patch14_reg4_dinov2.lvd142m"


class TimmDINOv2Teacher(Teacher):
    def __init__(self, model_name: str, pretrained: Any, arch: Optional[dict] = None,
                 input_size: Optional[int] = None, label: str = "dino_v2") -> None:
        super().__init__()
        import timm

        self.model_name = model_name
        kwargs: dict[str, Any] = dict(num_classes=0, dynamic_img_size=True)
        kwargs.update(arch or {})
        if input_size:
            kwargs.setdefault("img_size", input_size)
        use_weights = pretrained is not False and not (arch and pretrained is None)
        path = local_path(pretrained)
        if path:
            kwargs["pretrained_cfg_overlay"] = dict(file=path)
        try:
            self.model = timm.create_model(model_name, pretrained=use_weights, **kwargs)
        except Exception as e:
            if not use_weights:
                raise
            raise weights_error(label, path or f"timm hub model {model_name}",
                                f"pretrained: /path/to/{model_name.split('.')[0]}.safetensors", e) from e
        m = self.model
        self.patch_size = int(m.patch_embed.patch_size[0])
        self.input_size = int(m.patch_embed.img_size[0])
        cfg = getattr(m, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.summary_dim = int(m.num_features)
        self.feature_dim = int(m.num_features)
        self.dynamic_resolution = True

    def _forward(self, x: Tensor) -> TeacherOutput:
        tokens = self.model.forward_features(x)
        b = x.shape[0]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = tokens[:, self.model.num_prefix_tokens:]
        grid = patches.transpose(1, 2).reshape(b, -1, h, w)
        return TeacherOutput(tokens[:, 0], grid)


@register_teacher("dino_v2")
def _build(spec: TeacherSpec) -> Teacher:
    return TimmDINOv2Teacher(spec.model or DEFAULT_MODEL, spec.pretrained, spec.arch, spec.input_size)
