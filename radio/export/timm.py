"""timm registration of the student backbone: `timm.create_model("radio_student", ...)` after `import radio`.

    import radio, timm
    model = timm.create_model("radio_student", pretrained=True,
                              pretrained_cfg_overlay=dict(file="students/b16"))   # export dir or weights file
    model.eval()
    tokens = model.forward_features(normalized)   # (B, P + N, C): summary tokens, registers, then patches

The architecture comes from the export's config.json (next to the weights file), or from `radio_config=` (an
export directory, a config.json, or a config dict), or from StudentConfig keyword arguments (arch, patch_size,
...) for a randomly initialised model. The model is `RADIOStudent` (a timm VisionTransformer): it takes images
normalized with `model.pretrained_cfg["mean"/"std"]` (timm's data config), not [0, 1] images like
`radio.load`. Only the backbone is built; adaptor and normalizer weights in the file are ignored.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from radio.export.format import CONFIG_NAME, ExportError, parse_export_config
from radio.export.read import check_weights_header, read_export, verify_weights
from radio.export.state import build_model
from radio.model.radio_model import ModelConfig
from radio.model.vit import RADIOStudent, StudentConfig

ENTRYPOINT = "radio_student"


def _cfg(**kwargs: Any) -> dict[str, Any]:
    s = StudentConfig()
    return {"url": "", "num_classes": 0, "input_size": (3, 224, 224), "fixed_input_size": False,
            "mean": s.mean, "std": s.std, "first_conv": "patch_embed.proj", "classifier": "head",
            "license": "apache-2.0", **kwargs}


default_cfgs = generate_default_cfgs({ENTRYPOINT: _cfg()})


def _resolve(source: Any) -> tuple[ModelConfig | None, Path | None]:
    """(config, weights file) from an export dir, a weights file, a config.json, or a config dict."""
    if source is None:
        return None, None
    if isinstance(source, ModelConfig):
        return source, None
    if isinstance(source, dict):
        raw = source.get("radio_config", source)
        return parse_export_config(raw, "radio_config"), None
    path = Path(source)
    if path.is_dir():
        info = read_export(path)
        return info.config, info.weights
    if path.name == CONFIG_NAME and path.is_file():
        return read_export(path.parent).config, None
    if path.is_file():
        return read_export(path.parent).config, path
    raise ExportError(f"{str(path)!r} does not exist (expected a radio export directory or its weights file)")


def _backbone_state(state: dict[str, torch.Tensor], model: RADIOStudent) -> dict[str, torch.Tensor]:
    """Keep the backbone's weights of a radio export (native `backbone.` or HF `model.backbone.` keys)."""
    for prefix in ("backbone.", "model.backbone."):
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return state  # a bare backbone state dict


@register_model
def radio_student(pretrained: bool = False, radio_config: Any = None, **kwargs: Any) -> RADIOStudent:
    """The radio student backbone (CPE, one summary token per summary teacher, registers).

    Args:
        pretrained: load the weights named by `pretrained_cfg_overlay=dict(file=...)` (export dir or file).
        radio_config: architecture source when not loading weights: export dir, config.json or dict.
        **kwargs: StudentConfig fields (arch, patch_size, embed_dim, ...) and `num_summary_tokens` for a model
            without an export; timm's own options (pretrained_cfg_overlay, ...).
    """
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    config, weights = _resolve(radio_config)
    if overlay.get("file"):
        file_config, file_weights = _resolve(overlay["file"])
        config, weights = config or file_config, file_weights or weights
    if pretrained:
        if weights is None:
            raise ExportError("radio_student has no hosted weights: pass "
                              "pretrained_cfg_overlay=dict(file=EXPORT_DIR)")
        info = read_export(weights.parent)
        verify_weights(info)  # checksums; timm then reads the safetensors file (and would cast its dtypes)
        if Path(weights) == info.weights:
            with torch.device("meta"):
                check_weights_header(info, build_model(info.config, repr(str(weights.parent))))
        overlay["file"] = str(weights)
    for k in ("num_classes", "global_pool"):
        if kwargs.pop(k, None) not in (None, 0, ""):
            raise ValueError(f"radio_student is a feature backbone: {k} is not supported")
    if kwargs.pop("in_chans", 3) != 3:
        raise ValueError("radio_student takes RGB images (in_chans=3)")
    timm_keys = {"cache_dir", "pretrained_cfg"}
    timm_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in timm_keys}
    num_summary = kwargs.pop("num_summary_tokens", None)
    if config is not None:
        if kwargs:
            student = dataclasses.replace(config.student, **kwargs)
        else:
            student = config.student
        num_summary = num_summary or max(1, sum(1 for t in config.teachers if t.summary_dim))
    else:
        student = StudentConfig(**kwargs)
        num_summary = num_summary or 1
    step = student.patch_size
    side = max(step, min(student.max_resolution, 224) // step * step)
    overlay.update(mean=tuple(student.mean), std=tuple(student.std), input_size=(3, side, side))
    return build_model_with_cfg(
        lambda **_: RADIOStudent(student, num_summary_tokens=num_summary), ENTRYPOINT, pretrained,
        pretrained_cfg_overlay=overlay, pretrained_filter_fn=_backbone_state,
        kwargs_filter=("num_classes", "global_pool", "in_chans"),  # type: ignore[arg-type]  # timm: 1-tuple
        **timm_kwargs)

