"""Hugging Face transformers integration: `AutoModel.from_pretrained(DIR)` without `trust_remote_code`.

Importing this module registers `RADIOStudentConfig` (model_type "radio_student"; transformers' own "radio" is
NVIDIA's C-RADIO) with `AutoConfig` and `RADIOStudentModel` with `AutoModel`. `import radio` arranges that
import as soon as transformers is imported (radio._import_hooks), so `radio.load` never pays for transformers.

    import radio
    from transformers import AutoModel
    model = AutoModel.from_pretrained("students/b16-hf")    # radio export CKPT --format hf
    out = model(images)                                      # same outputs as radio.load(DIR)(images)

Weights are safetensors only (`use_safetensors=True` is forced: no pickle is ever loaded) and must match the
config exactly: a missing, unexpected, mis-shaped or mis-typed key is an error, not a warning. A local
directory is checked as `radio.load` checks it: its checksums (config.json's `radio_config` and
model.safetensors; a missing one is a warning, or an error with `verify=True`), the dtypes in the weights file
and the values' finiteness.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from radio.export.format import (
    CONFIG_NAME,
    HF_MODEL_TYPE,
    WEIGHTS_NAME,
    ExportError,
    file_sha256,
    parse_export_config,
)
from radio.export.read import check_weights_header, read_export, verify_weights
from radio.export.state import build_model, check_finite, load_into, restore_derived_buffers
from radio.model.radio_model import ModelConfig, RADIOModel
from radio.types import IntermediatesOutput


class RADIOStudentConfig(PretrainedConfig):
    """transformers config of a radio student.

    Args:
        radio_config: the native export config (radio.export.write.export_config): ModelConfig fields plus
            preprocessing, defaults and provenance.
        weights_sha256: checksum of model.safetensors, written at export and checked on local loads.
    """

    model_type = HF_MODEL_TYPE

    def __init__(self, radio_config: dict[str, Any] | None = None, weights_sha256: str | None = None,
                 **kwargs: Any) -> None:
        self.radio_config = dict(radio_config or {})
        self.weights_sha256 = weights_sha256
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        if not self.radio_config:
            raise ExportError(f"{HF_MODEL_TYPE} config has an empty 'radio_config'")
        return parse_export_config(self.radio_config, f"{CONFIG_NAME}: radio_config")


class RADIOStudentModel(PreTrainedModel):
    """transformers wrapper of `RADIOModel` (attribute `model`); forward takes images in [0, 1]."""

    config_class = RADIOStudentConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"

    def __init__(self, config: RADIOStudentConfig) -> None:
        super().__init__(config)
        self.model = build_model(config.model_config(), f"{HF_MODEL_TYPE} config")
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Every parameter and persistent buffer comes from the checkpoint (a missing key is an error in
        # from_pretrained); transformers builds the model on the meta device, so the non-persistent
        # buffers are rebuilt from the config.
        if isinstance(module, RADIOModel):
            restore_derived_buffers(module)

    def forward(self, pixel_values: Tensor, adaptors: Sequence[str] | None = None,
                feature_fmt: str = "NLC", num_tokens: int | None = None):
        """Same contract as `RADIOModel.forward`: StudentOutput, or name -> AdaptorOutput with `adaptors`."""
        return self.model(pixel_values, adaptors=adaptors, feature_fmt=feature_fmt, num_tokens=num_tokens)

    def forward_intermediates(self, pixel_values: Tensor, **kwargs: Any) -> IntermediatesOutput:
        return self.model.forward_intermediates(pixel_values, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`: safetensors only, strict keys; a local directory's checksums,
        dtypes and values are checked as by `radio.load` (`verify`: as radio.load's)."""
        if kwargs.get("use_safetensors") is False:
            raise ExportError("radio students load from safetensors only; pickled weights are never loaded")
        kwargs["use_safetensors"] = True
        want_info = kwargs.pop("output_loading_info", False)
        verify = kwargs.pop("verify", None)
        if "torch_dtype" not in kwargs:  # as exported: not config.json's "dtype", which no checksum covers
            kwargs.setdefault("dtype", torch.float32)
        local = Path(str(pretrained_model_name_or_path))
        if local.is_dir():
            info = read_export(local, verify=verify)
            verify_weights(info, verify)
            with torch.device("meta"):
                check_weights_header(info, build_model(info.config, repr(str(local / CONFIG_NAME))))
        loaded: Any = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                              **kwargs)
        model, loading = loaded
        problems = {k: sorted(v)[:5] for k, v in loading.items()
                    if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if problems:
            raise ExportError(f"{pretrained_model_name_or_path}: weights do not match the config: {problems}")
        check_finite(model.model.state_dict(), f"{pretrained_model_name_or_path}")
        model.eval()
        return (model, loading) if want_info else model


def save_hf(model: RADIOModel, out: str | Path, radio_config: dict[str, Any]) -> Path:
    """`save_pretrained` of `model` into `out` (config.json with the checksum, model.safetensors)."""
    out = Path(out)
    hf = RADIOStudentModel(RADIOStudentConfig(radio_config=radio_config))
    load_into(hf.model, model.state_dict(), "the model being exported")
    hf.save_pretrained(str(out), max_shard_size="1000GB")
    cfg_file = out / CONFIG_NAME
    cfg = json.loads(cfg_file.read_text())
    cfg["weights_sha256"] = file_sha256(out / WEIGHTS_NAME)
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def register() -> None:
    """Register the config and model with transformers' Auto classes (idempotent)."""
    AutoConfig.register(HF_MODEL_TYPE, RADIOStudentConfig, exist_ok=True)
    AutoModel.register(RADIOStudentConfig, RADIOStudentModel, exist_ok=True)


register()
