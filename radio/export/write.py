"""Writing an export: a fit checkpoint (or an in-memory student) -> a self-describing directory.

Layouts (`radio export CKPT --out DIR --format ...`):

- ``safetensors`` (native): `config.json` (format version, architecture, teachers and adaptor dims,
  preprocessing, resolution step, defaults, provenance, both checksums), `model.safetensors` (student +
  adaptors + normalizer statistics) and a model card `README.md` (radio.export.card).
- ``hf``: `save_pretrained` of `radio.export.hf.RADIOStudentModel`: `config.json` with ``model_type:
  radio_student`` and the native config under ``radio_config``, `model.safetensors` (keys prefixed
  ``model.``), `README.md`.
- ``onnx``: `model.onnx` with dynamic batch, height and width (radio.export.onnx), the native `config.json`
  (without weights) and `README.md`.

Checkpoints are read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from radio.export.card import find_report, model_card, read_report
from radio.export.format import (
    CONFIG_NAME,
    FORMATS,
    ONNX_NAME,
    WEIGHTS_NAME,
    ExportError,
    config_sha256,
    file_sha256,
    write_json,
)
from radio.export.state import build_model, load_into, restore_derived_buffers
from radio.model.radio_model import FORMAT_VERSION, ModelConfig, RADIOModel


# ---- checkpoints ------------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (weights_only=True); fail clearly on anything else."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ExportError(f"checkpoint {str(path)!r} cannot be loaded safely (weights_only=True): "
                          f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ExportError(f"checkpoint {str(path)!r} has no 'state_dict'; is it a radio fit checkpoint?")
    if "radio_model_config" not in ckpt:
        raise ExportError(f"checkpoint {str(path)!r} has no 'radio_model_config'; it was not written by radio fit")
    return ckpt


def model_from_checkpoint(path: str | Path) -> RADIOModel:
    ckpt = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(ckpt["radio_model_config"], source=f"{path}: radio_model_config")
    except ValueError as e:
        raise ExportError(str(e)) from e
    with torch.device("meta"):  # every value comes from the checkpoint or the config
        model = build_model(config, repr(str(path)))
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    load_into(model, state, f"checkpoint {str(path)!r}", assign=True)
    restore_derived_buffers(model)
    model.radio_teacher_specs = ckpt.get("radio_teacher_specs", [])
    model.radio_checkpoint_step = int(ckpt.get("global_step", -1))
    return model.eval()


def select_adaptors(model: RADIOModel, keep: Sequence[str] | None) -> RADIOModel:
    """A copy of `model` carrying only the adaptor heads (and normalizers) named in `keep`; None keeps all.

    The backbone keeps every summary token: the student's summary output does not change.
    """
    if keep is None:
        return model
    keep = list(keep)
    unknown = sorted(set(keep) - set(model.adaptors))
    if unknown:
        raise ExportError(f"--adaptors: unknown adaptor(s) {unknown}; this model has: "
                          f"{', '.join(model.adaptors) or 'none'}")
    teachers = [dataclasses.replace(t, has_adaptor=t.name in keep) for t in model.config.teachers]
    with torch.device("meta"):
        slim = RADIOModel(dataclasses.replace(model.config, teachers=teachers))
    own = model.state_dict()
    slim.load_state_dict({k: own[k].clone() for k in slim.state_dict()}, assign=True)
    restore_derived_buffers(slim)
    for attr in ("radio_teacher_specs", "radio_checkpoint_step"):
        if hasattr(model, attr):
            setattr(slim, attr, getattr(model, attr))
    return slim.eval()


# ---- writing ----------------------------------------------------------------------------------------------
def export_checkpoint(ckpt_path: str | Path, out: str | Path, fmt: str = "safetensors",
                      adaptors: Sequence[str] | None = None, num_tokens: int | None = None,
                      report: str | Path | None = None, extra: dict[str, Any] | None = None,
                      verify_onnx: bool = True, merge_r: int = 0, merge_schedule: str = "constant") -> Path:
    """Write the student of a fit checkpoint to `out` in format `fmt` (see module docstring).

    Args:
        adaptors: names of the adaptor heads to keep ([] drops them all); None keeps every one.
        num_tokens: default output-token budget: the loaded model's `forward` merges the patch tokens to exactly
            this many (radio.tome); stored as `tome.num_tokens` and `defaults.num_tokens` (None: full grid).
        merge_r, merge_schedule: default in-network token merging of the loaded model (`tome.r`,
            `tome.schedule`; RADIOModel.set_token_merging).
        report: a `report.json` whose eval results go into the model card; None looks for one next to the
            checkpoint's run (radio.export.card.find_report).
        verify_onnx: with fmt="onnx", run the graph with onnxruntime at two resolutions and fail if it differs
            from PyTorch by 1e-4 or more.
    Returns:
        The export directory.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    model = select_adaptors(model_from_checkpoint(ckpt_path), adaptors)
    model.set_token_merging(r=merge_r, schedule=merge_schedule, num_tokens=model.config.tome.num_tokens)
    report_path = Path(report) if report is not None else find_report(ckpt_path)
    provenance = {"checkpoint": str(ckpt_path), "step": model.radio_checkpoint_step,
                  "teacher_specs": model.radio_teacher_specs, **(extra or {})}
    if report_path is not None:
        provenance["report"] = str(report_path)
    return export_model(model, out, fmt, provenance=provenance, num_tokens=num_tokens,
                        report=read_report(report_path) if report_path else None, verify_onnx=verify_onnx)


def export_model(model: RADIOModel, out: str | Path, fmt: str = "safetensors",
                 provenance: dict[str, Any] | None = None, num_tokens: int | None = None,
                 report: dict[str, Any] | None = None, verify_onnx: bool = True) -> Path:
    """Write `model` to `out` in format `fmt`; see `export_checkpoint` for the arguments."""
    if num_tokens is not None and (not isinstance(num_tokens, int) or num_tokens < 1):
        raise ExportError(f"--num-tokens must be a positive integer, got {num_tokens!r}")
    config = export_config(model, provenance, num_tokens)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        config["config_sha256"] = config_sha256(config)
        save_weights(model, out / WEIGHTS_NAME)
        config["weights_sha256"] = file_sha256(out / WEIGHTS_NAME)
        write_json(out / CONFIG_NAME, config)
    elif fmt == "hf":
        from radio.export.hf import save_hf  # imports transformers: only when asked for

        config["config_sha256"] = config_sha256(config)
        save_hf(model, out, config)
    elif fmt == "onnx":
        from radio.export.onnx import check_onnx, export_onnx

        outputs = export_onnx(model, out / ONNX_NAME)
        config["onnx"] = {"file": ONNX_NAME, "input": "images", "outputs": outputs,
                          "dynamic_axes": {"images": ["batch", "height", "width"]}}
        if verify_onnx:
            config["onnx"]["check"] = check_onnx(model, out / ONNX_NAME)
        config["config_sha256"] = config_sha256(config)
        write_json(out / CONFIG_NAME, config)
    else:
        raise ExportError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    (out / "README.md").write_text(model_card(config, fmt=fmt, report=report))
    return out


def export_config(model: RADIOModel, provenance: dict[str, Any] | None = None,
                  num_tokens: int | None = None) -> dict[str, Any]:
    """The native config.json content (without the checksums)."""
    config = model.config.to_dict()
    config["format_version"] = FORMAT_VERSION  # the layout written here, whatever the checkpoint's was
    if num_tokens is not None:
        config["tome"]["num_tokens"] = num_tokens
    num_tokens = config["tome"]["num_tokens"]
    s = model.config.student
    config["resolution_step"] = model.resolution_step
    config["preprocessing"] = {"input": "float RGB (B, 3, H, W) in [0, 1]; the model normalizes internally",
                               "mean": list(s.mean), "std": list(s.std),
                               "resolution_step": model.resolution_step, "max_resolution": s.max_resolution}
    config["defaults"] = {"num_tokens": num_tokens}
    config["provenance"] = provenance or {}
    return config


def save_model(model: RADIOModel, out: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Native export of an in-memory model (safetensors layout)."""
    return export_model(model, out, "safetensors", provenance=provenance)


def save_weights(model: RADIOModel, path: Path, prefix: str = "") -> None:
    from safetensors.torch import save_file

    state = {prefix + k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "radio_format_version": str(FORMAT_VERSION)})
