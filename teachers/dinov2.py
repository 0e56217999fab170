"""DINOv2 teachers through timm (`vit_*_patch14_dinov2.lvd142m` and the `reg4` variants).

summary = the CLS token after the final norm; features = the patch tokens (registers dropped) as a grid.
Runs at any resolution that is a multiple of 14. Default follows RADIOv2.5: DINOv2-g/14 with registers.

Weights: `pretrained` None -> the model's default hub weights (timm's Hugging Face repo, fetched or taken from the
cache before the model is built, so a missing weight fails fast); a tag (`lvd142m`) -> that tag; a local
`.safetensors` / `.pth` file -> that file (timm's checkpoint filter applies, so the original DINOv2 `.pth`
files work too); False -> random initialisation.

References: Oquab et al., DINOv2 (2023); Darcet et al., Vision Transformers Need Registers (2023).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from teachers._weights import hub_guard, local_path, require_local, weights_error
from teachers.base import Teacher, TeacherOutput, TeacherSpec, resolve_options
from teachers.registry import register_teacher

DEFAULT_MODEL = "vit_giant_patch14_reg4_dinov2.lvd142m"


def _hub_file(label: str, model_name: str, how: str) -> str | None:
    """Download (or find in the cache) the hub weights of a timm model name; None when it has no hub repo."""
    import timm.models
    from huggingface_hub import hf_hub_download

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError as e:  # unknown tag
        raise ValueError(f"teacher {label!r}: {e}") from e
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo = cfg.hf_hub_id
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    last: BaseException | None = None
    with hub_guard():
        for filename in names:
            try:
                return hf_hub_download(repo, filename, library_name="timm")
            except Exception as e:  # EntryNotFound -> next name; offline / network -> reported below
                last = e
    raise weights_error(label, f"timm hub model {model_name} (Hugging Face repo {repo})", how,
                        last)  # type: ignore[arg-type]  # set: names is never empty


class TimmDINOv2Teacher(Teacher):
    """Wraps a timm VisionTransformer; `arch` overrides timm.create_model's keyword arguments."""

    model: Any  # a timm VisionTransformer (timm.create_model returns an nn.Module)

    def __init__(self, model_name: str, pretrained: Any, arch: dict | None = None,
                 input_size: int | None = None, label: str = "dino_v2") -> None:
        super().__init__()
        import timm

        kwargs: dict[str, Any] = dict(num_classes=0, dynamic_img_size=True)
        kwargs.update(arch or {})
        if input_size:
            kwargs.setdefault("img_size", input_size)
        how = f"pretrained: /path/to/{model_name.split('.')[0]}.safetensors"
        path = local_path(pretrained)
        use_weights = pretrained is not False and not (arch and pretrained is None)
        if isinstance(pretrained, str) and not path:  # a pretrained tag
            model_name = f"{model_name.split('.')[0]}.{pretrained}"
        if path:
            require_local(label, path, how)
        elif use_weights:
            path = _hub_file(label, model_name, how)
        if path:
            kwargs["pretrained_cfg_overlay"] = dict(file=path)
        self.model_name = model_name
        try:
            self.model = timm.create_model(model_name, pretrained=use_weights, **kwargs)
        except Exception as e:
            if not use_weights:
                raise
            raise weights_error(label, f"local path {path}" if path else f"timm hub model {model_name}",
                                how, e) from e
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
    resolve_options(spec.name, spec.options, {})
    return TimmDINOv2Teacher(spec.model or DEFAULT_MODEL, spec.pretrained, spec.arch, spec.input_size)
