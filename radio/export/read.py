"""Reading an export back: `radio.load` (native or `--format hf` directory), and the checks the HF and timm
loaders share with it.

`radio.load` needs no transformers and never unpickles anything: JSON + safetensors only. Without checksums an
export loads with a warning that it is unverified (`verify=None`, the default), or fails (`verify=True`, what
`radio eval` uses). Whatever the checksums say, every config value is type- and range-checked and every tensor
must have the key, shape and dtype of the model the config builds, with finite values; any failure is an
`ExportError` naming the file and the key.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from radio.export.format import (
    CHECKSUM_KEYS,
    CONFIG_CHECKSUM_SINCE,
    CONFIG_NAME,
    HF_MODEL_TYPE,
    HF_PREFIX,
    ONNX_NAME,
    PICKLE_NAMES,
    WEIGHTS_NAME,
    ExportError,
    UnverifiedExportWarning,
    config_sha256,
    file_sha256,
    parse_export_config,
    read_json,
    verify_mode,
)
from radio.export.state import build_model, check_finite, check_state, load_into, restore_derived_buffers
from radio.model.radio_model import FORMAT_VERSION, ModelConfig, RADIOModel


class ExportInfo(NamedTuple):
    """What an export directory holds.

    raw: the native config dict; layout: "safetensors" or "hf"; prefix: of the weight keys ("" or "model.").
    """

    config: ModelConfig
    raw: dict[str, Any]
    layout: str
    weights: Path
    prefix: str


def read_export(path: str | Path, verify: bool | None = None) -> ExportInfo:
    """Read and validate an export directory's config (native or Hugging Face layout); loads no weights.

    verify: unless False (None: the `verification` default), a recorded config_sha256 must match the config.
    """
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise ExportError(f"{str(cfg_file)!r} is missing; is {str(path)!r} a radio export directory?")
    raw = read_json(cfg_file)
    if isinstance(raw, dict) and "model_type" in raw:
        if raw["model_type"] != HF_MODEL_TYPE:
            raise ExportError(f"{str(cfg_file)!r} has model_type {raw['model_type']!r}; radio.load reads "
                              f"{HF_MODEL_TYPE!r} (radio export --format hf) or native radio exports")
        if "radio_config" not in raw:
            raise ExportError(f"{str(cfg_file)!r}: missing key 'radio_config'")
        if not isinstance(raw["radio_config"], dict):
            raise ExportError(f"{str(cfg_file)!r}: radio_config must be a JSON object, got "
                              f"{type(raw['radio_config']).__name__}")
        native, layout, prefix = dict(raw["radio_config"]), "hf", HF_PREFIX
        if raw.get("weights_sha256") is not None:
            native["weights_sha256"] = raw["weights_sha256"]
        source = f"{cfg_file}: radio_config"
    else:
        native, layout, prefix, source = raw, "safetensors", "", str(cfg_file)
    version = native.get("format_version") if isinstance(native, dict) else None
    newer = isinstance(version, int) and version > FORMAT_VERSION  # its checksum may be another: say "newer"
    if (isinstance(native, dict) and not newer and verify_mode(verify) is not False
            and native.get("config_sha256") is not None):
        try:
            digest = config_sha256(native)
        except ValueError as e:  # NaN or Infinity in the JSON
            raise ExportError(f"{source}: {e}") from e
        if digest != native["config_sha256"]:
            raise ExportError(f"{str(cfg_file)!r} was modified or corrupted after export: its content does not "
                              f"match config_sha256 (re-export or re-download it)")
    config = parse_export_config(native, source)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        if (path / ONNX_NAME).is_file():
            raise ExportError(f"{str(weights)!r} is missing: {str(path)!r} is an ONNX export; run "
                              f"{ONNX_NAME} with onnxruntime (its inputs and outputs are in config.json)")
        pickles = [n for n in PICKLE_NAMES if (path / n).is_file()]
        hint = f" ({', '.join(pickles)} is pickled; radio never unpickles an export)" if pickles else ""
        raise ExportError(f"{str(weights)!r} is missing{hint}")
    return ExportInfo(config, native, layout, weights, prefix)


def verify_weights(info: ExportInfo, verify: bool | None = None) -> None:
    """Compare the weights file with the sha256 recorded at export; a mismatch means corruption/truncation.

    verify: None (default: the `verification` in force, normally None) checks the checksums present and warns
    (UnverifiedExportWarning) about a missing one; True makes a missing checksum an error; False checks nothing.
    The config's own checksum is compared by `read_export`; here a missing one counts from format version 3.
    """
    mode = verify_mode(verify)
    if mode is False:
        return
    cfg_file = str(info.weights.parent / CONFIG_NAME)
    missing = [k for k in CHECKSUM_KEYS if info.raw.get(k) is None
               and (k == "weights_sha256" or info.config.format_version >= CONFIG_CHECKSUM_SINCE)]
    if missing:
        msg = (f"{cfg_file!r} has no {' or '.join(missing)}: the export is unverified (corruption or edits of "
               f"{WEIGHTS_NAME if 'weights_sha256' in missing else CONFIG_NAME} cannot be detected)")
        if mode:
            raise ExportError(msg + "; re-export it, or load it with verify=False (radio eval --no-verify) "
                                    "if you trust it")
        warnings.warn(msg, UnverifiedExportWarning, stacklevel=3)
    expected = info.raw.get("weights_sha256")
    if expected is not None and file_sha256(info.weights) != expected:
        raise ExportError(f"{str(info.weights)!r} is corrupted or truncated: its sha256 does not match "
                          f"weights_sha256 in {CONFIG_NAME} (re-export or re-download it)")


def read_weights(info: ExportInfo, verify: bool | None = None) -> dict[str, torch.Tensor]:
    """The export's state dict with the layout prefix removed (safetensors only; never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    verify_weights(info, verify)
    try:
        state = load_file(str(info.weights))
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as e:
        raise ExportError(f"{str(info.weights)!r} is corrupted or truncated: {e}") from e
    return _unprefixed(info, state)


def _unprefixed(info: ExportInfo, entries: dict[str, Any]) -> dict[str, Any]:
    """`entries` keyed by weight name with the layout's prefix removed; a key without it is an ExportError."""
    foreign = [k for k in entries if not k.startswith(info.prefix)]
    if foreign:
        raise ExportError(f"{str(info.weights)!r}: unexpected keys {foreign[:5]} (expected the prefix "
                          f"{info.prefix!r} of a {info.layout} export)")
    return {k[len(info.prefix):]: v for k, v in entries.items()}


_SAFE_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
                "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                "F64": torch.float64}


def check_weights_header(info: ExportInfo, model: torch.nn.Module) -> None:
    """Keys, shapes and dtypes in the weights file's header against `model` (e.g. on the meta device), before
    any tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(info.weights), "pt") as f:
            found = {k: (_SAFE_DTYPES.get(f.get_slice(k).get_dtype(), f.get_slice(k).get_dtype()),
                         tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as e:
        raise ExportError(f"{str(info.weights)!r} is corrupted or truncated: {e}") from e
    own = model.state_dict()
    found = _unprefixed(info, found)
    check_state({k: v[1] for k, v in found.items()}, {k: v[0] for k, v in found.items()}, own,
                repr(str(info.weights)))


def load(path: str | Path, device: str | torch.device = "cpu", verify: bool | None = None) -> RADIOModel:
    """Load an exported student (eval mode) from a native or `--format hf` directory.

    Needs none of the teacher libraries (nor transformers); never unpickles. Every config value, and every
    tensor's key, shape and dtype, is checked against what the config builds; errors are ExportErrors.

    Args:
        verify: the checksums recorded at export (config.json's and model.safetensors'), which catch corruption
            and edits. None (default; `verification` can change it): check those present, warn
            (UnverifiedExportWarning) when one is missing; True: a missing checksum is an error too; False:
            skip them.
    """
    info = read_export(path, verify=verify)
    verify_weights(info, verify)
    with torch.device("meta"):  # no random initialisation: every value comes from the file or the config
        model = build_model(info.config, repr(str(info.weights.parent / CONFIG_NAME)))
    check_weights_header(info, model)
    state = read_weights(info, verify=False)
    check_finite(state, repr(str(info.weights)))
    load_into(model, state, repr(str(info.weights)), assign=True, check_dtype=True)
    restore_derived_buffers(model)
    model.provenance = info.raw.get("provenance", {})
    model.export_defaults = dict(info.raw.get("defaults") or {})
    return model.to(device).eval()
