"""open_clip teachers: CLIP and SigLIP image towers (open_clip's own ViT, or a timm trunk as in SigLIP).

summary = the model's image embedding (`encode_image`, unnormalized); features = the patch tokens of the last
block (before the final norm), as a grid. The text tower stays available for zero-shot (`encode_text`,
`tokenizer`). Defaults follow RADIOv2.5: DFN CLIP ViT-H-14-378 and ViT-SO400M-14-SigLIP-384.

Weights: `pretrained` None -> the family's default tag when the model has it, else the model's first published
tag; a tag -> that tag; a local file -> that file; False -> random initialisation. `arch` deep-merges into the
named model config (a tiny configuration of the same classes) and implies random initialisation unless
`pretrained` is a path. A local file or random weights take the preprocessing (mean/std) that the model's
published tags agree on, so a local SigLIP file is normalized as SigLIP was trained.

References: Radford et al., CLIP (2021); Fang et al., Data Filtering Networks (2023); Zhai et al., SigLIP (2023).
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

from torch import Tensor

from teachers._weights import hub_guard, local_path, require_local, weights_error
from teachers.base import Teacher, TeacherOutput, TeacherSpec, resolve_options
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


class _NoRandomInitWarning(logging.Filter):
    """Context manager: drops open_clip's random-initialisation warning (logged on the root logger) while on."""

    MESSAGE = "No pretrained weights loaded for model"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.MESSAGE)

    def __enter__(self) -> _NoRandomInitWarning:
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeFilter(self)


def _published_preprocess(model_name: str) -> dict[str, Any] | None:
    """mean/std that every published tag of `model_name` uses, or None when they differ or there is no tag."""
    import open_clip

    found = set()
    for tag in open_clip.list_pretrained_tags_by_model(model_name):
        cfg = open_clip.get_pretrained_cfg(model_name, tag)
        found.add((tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                   tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))))
    if len(found) != 1:
        return None
    mean, std = found.pop()
    return {"mean": mean, "std": std}


def _default_tag(label: str, model_name: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if DEFAULTS[label][1] in tags:
        return DEFAULTS[label][1]
    if not tags:
        raise ValueError(f"teacher {label!r}: open_clip model {model_name!r} has no published weights; pass "
                         f"`pretrained: /path/to/weights.safetensors` or `pretrained: false`")
    return tags[0]


class OpenCLIPTeacher(Teacher):
    """Wraps an open_clip model (CLIP or CustomTextCLIP)."""

    def __init__(self, model_name: str, pretrained: Any, arch: dict | None = None,
                 input_size: int | None = None, label: str = "clip") -> None:
        super().__init__()
        import open_clip

        self.model_name = model_name
        base_cfg = open_clip.get_model_config(model_name)
        if base_cfg is None:
            raise ValueError(f"teacher {label!r}: unknown open_clip model {model_name!r}; "
                             f"see open_clip.list_models()")
        cfg = _deep_merge(base_cfg, arch or {})
        kwargs: dict[str, Any] = {k: v for k, v in cfg.items() if k != "custom_text"} if arch else {}
        how = f"pretrained: /path/to/open_clip_model.safetensors (for {model_name})"
        path = local_path(pretrained)
        if path:
            tag: str | None = require_local(label, path, how)
        elif pretrained is False or (arch and pretrained is None):
            tag = None
        else:
            tag = pretrained if isinstance(pretrained, str) else _default_tag(label, model_name)
        if tag is not None and not path and tag not in open_clip.list_pretrained_tags_by_model(model_name):
            raise ValueError(f"teacher {label!r}: open_clip model {model_name!r} has no pretrained tag {tag!r}; "
                             f"published: {open_clip.list_pretrained_tags_by_model(model_name)}")
        if tag is None or path:
            kwargs["force_preprocess_cfg"] = _published_preprocess(model_name)
        force_size = input_size if input_size and not arch else None
        create = dict(force_image_size=force_size, pretrained_text=False, **kwargs)
        # Random weights on purpose (pretrained: false / arch), or a local file loaded below: open_clip's
        # "No pretrained weights loaded ... initialized randomly" warning would be noise or wrong there.
        quiet = _NoRandomInitWarning() if tag is None or path else contextlib.nullcontext()
        try:
            with hub_guard(), quiet:
                self.model = open_clip.create_model(model_name, pretrained=None if path else tag, **create)
        except Exception as e:  # missing download, unknown tag, mismatched checkpoint
            if tag is None:
                raise
            raise weights_error(label, f"open_clip tag {model_name}:{tag}", how, e) from e
        visual = self.model.visual
        if hasattr(visual, "trunk"):  # a timm trunk is built at timm's default size: match the config's
            size = tuple(visual.image_size)
            if tuple(visual.trunk.patch_embed.img_size) != size:
                visual.set_input_size(size)
            self.patch_size = int(visual.trunk.patch_embed.patch_size[0])
            self.feature_dim = int(visual.trunk.num_features)
        else:
            ps = visual.patch_size
            self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
            self.feature_dim = int(visual.transformer.width)
        if path:  # loaded after the model has its final shape (open_clip resizes position embeddings)
            try:
                open_clip.load_checkpoint(self.model, path, strict=True, weights_only=True)
            except Exception as e:
                raise weights_error(label, f"local path {path}", how, e) from e
        size = visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        pp = open_clip.get_model_preprocess_cfg(self.model)
        self.mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
        self.summary_dim = int(cfg["embed_dim"])  # image and text embeddings share this width
        self.dynamic_resolution = False

    def _forward(self, x: Tensor) -> TeacherOutput:
        out = self.model.visual.forward_intermediates(x, indices=1, output_fmt="NCHW")
        return TeacherOutput(out["image_features"], out["image_intermediates"][-1])

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Text embeddings (B, summary_dim) of tokenized prompts, for zero-shot against the summary."""
        return self.model.encode_text(tokens)

    def tokenizer(self):
        """The model's tokenizer (SigLIP's is a Hugging Face tokenizer: fetched or taken from the cache)."""
        import open_clip

        with hub_guard():
            return open_clip.get_tokenizer(self.model_name)


def _build(label: str):
    def builder(spec: TeacherSpec) -> Teacher:
        resolve_options(spec.name, spec.options, {})
        model_name = spec.model or DEFAULTS[label][0]
        return OpenCLIPTeacher(model_name, spec.pretrained, spec.arch, spec.input_size, label=label)

    return builder


register_teacher("clip")(_build("clip"))
register_teacher("siglip")(_build("siglip"))
