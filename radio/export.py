"""Export a trained student to a self-describing directory, and load it back with `radio.load`.

Layouts (`radio export CKPT --out DIR --format ...`):

- ``safetensors`` (native): `config.json` (format version, architecture, teachers and adaptor dims,
  preprocessing, resolution step, defaults, provenance, the weights' sha256), `model.safetensors` (student +
  adaptors + normalizer statistics) and a model card `README.md`.
- ``hf``: `save_pretrained` of `radio.hf.RADIOStudentModel`: `config.json` with ``model_type: radio_student``
  and the native config under ``radio_config``, `model.safetensors` (keys prefixed ``model.``), `README.md`.
- ``onnx``: `model.onnx` with dynamic batch, height and width (radio.onnx_export), the native `config.json`
  (without weights) and `README.md`.

`radio.load` reads the first two without transformers; it never unpickles anything: JSON + safetensors only,
and checkpoints are read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import torch

from radio.model.radio_model import ModelConfig, RADIOModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
FORMATS = ("safetensors", "hf", "onnx")
HF_MODEL_TYPE = "radio_student"  # transformers already has a "radio" model type (NVIDIA's C-RADIO)
HF_PREFIX = "model."
# Keys of a native config.json besides the ModelConfig fields; derived from it or informational.
EXPORT_KEYS = ("resolution_step", "preprocessing", "defaults", "provenance", "weights_sha256")
PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")


class ExportError(RuntimeError):
    """A checkpoint or export directory that cannot be read; the message names the file."""


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


def select_adaptors(model: RADIOModel, keep: Optional[Sequence[str]]) -> RADIOModel:
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
                      adaptors: Optional[Sequence[str]] = None, num_tokens: Optional[int] = None,
                      report: Optional[str | Path] = None, extra: Optional[dict[str, Any]] = None,
                      verify_onnx: bool = True, merge_r: int = 0, merge_schedule: str = "constant") -> Path:
    """Write the student of a fit checkpoint to `out` in format `fmt` (see module docstring).

    Args:
        adaptors: names of the adaptor heads to keep ([] drops them all); None keeps every one.
        num_tokens: default output-token budget: the loaded model's `forward` merges the patch tokens to exactly
            this many (radio.tome); stored as `tome.num_tokens` and `defaults.num_tokens` (None: full grid).
        merge_r, merge_schedule: default in-network token merging of the loaded model (`tome.r`,
            `tome.schedule`; RADIOModel.set_token_merging).
        report: a `report.json` whose eval results go into the model card; None looks for one next to the
            checkpoint's run (radio.model_card.find_report).
        verify_onnx: with fmt="onnx", run the graph with onnxruntime at two resolutions and fail if it differs
            from PyTorch by 1e-4 or more.
    Returns:
        The export directory.
    """
    from radio.model_card import find_report, read_report

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
                 provenance: Optional[dict[str, Any]] = None, num_tokens: Optional[int] = None,
                 report: Optional[dict[str, Any]] = None, verify_onnx: bool = True) -> Path:
    """Write `model` to `out` in format `fmt`; see `export_checkpoint` for the arguments."""
    from radio.model_card import model_card

    if num_tokens is not None and (not isinstance(num_tokens, int) or num_tokens < 1):
        raise ExportError(f"--num-tokens must be a positive integer, got {num_tokens!r}")
    config = export_config(model, provenance, num_tokens)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_weights(model, out / WEIGHTS_NAME)
        config["weights_sha256"] = file_sha256(out / WEIGHTS_NAME)
        _write_json(out / CONFIG_NAME, config)
    elif fmt == "hf":
        from radio.hf import save_hf

        save_hf(model, out, config)
    elif fmt == "onnx":
        from radio.onnx_export import check_onnx, export_onnx

        outputs = export_onnx(model, out / ONNX_NAME)
        config["onnx"] = {"file": ONNX_NAME, "input": "images", "outputs": outputs,
                          "dynamic_axes": {"images": ["batch", "height", "width"]}}
        if verify_onnx:
            config["onnx"]["check"] = check_onnx(model, out / ONNX_NAME)
        _write_json(out / CONFIG_NAME, config)
    else:
        raise ExportError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    (out / "README.md").write_text(model_card(config, fmt=fmt, report=report))
    return out


def export_config(model: RADIOModel, provenance: Optional[dict[str, Any]] = None,
                  num_tokens: Optional[int] = None) -> dict[str, Any]:
    """The native config.json content (without the weights' checksum)."""
    config = model.config.to_dict()
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


def save_model(model: RADIOModel, out: str | Path, provenance: Optional[dict[str, Any]] = None) -> Path:
    """Native export of an in-memory model (safetensors layout)."""
    return export_model(model, out, "safetensors", provenance=provenance)


def save_weights(model: RADIOModel, path: Path, prefix: str = "") -> None:
    from safetensors.torch import save_file

    from radio.model.radio_model import FORMAT_VERSION

    state = {prefix + k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "radio_format_version": str(FORMAT_VERSION)})


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path, what: str = "") -> Any:
    """Parse a JSON file; a missing or malformed file is an ExportError naming it (prefixed by `what`)."""
    name = f"{what} {str(path)!r}".strip()
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ExportError(f"{name} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{name} is not valid JSON: {e}") from e


# ---- reading ----------------------------------------------------------------------------------------------
class ExportInfo(NamedTuple):
    """What an export directory holds.

    raw: the native config dict; layout: "safetensors" or "hf"; prefix: of the weight keys ("" or "model.").
    """

    config: ModelConfig
    raw: dict[str, Any]
    layout: str
    weights: Path
    prefix: str


def parse_export_config(raw: Any, source: str) -> ModelConfig:
    """ModelConfig from a native config dict (export-only keys ignored); errors name `source` and the key."""
    if not isinstance(raw, dict):
        raise ExportError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    d = {k: v for k, v in raw.items() if k not in EXPORT_KEYS + ("onnx",)}
    budget = (raw.get("defaults") or {}).get("num_tokens")
    if "tome" not in d and budget is not None:  # written before ModelConfig.tome: the budget was only here
        d["tome"] = {"num_tokens": budget}
    try:
        return ModelConfig.from_dict(d, source=source)
    except (ValueError, TypeError) as e:
        raise ExportError(str(e)) from e


def read_export(path: str | Path) -> ExportInfo:
    """Read and validate an export directory's config (native or Hugging Face layout); loads no weights."""
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
        native, layout, prefix = dict(raw["radio_config"]), "hf", HF_PREFIX
        if raw.get("weights_sha256"):
            native["weights_sha256"] = raw["weights_sha256"]
        source = f"{cfg_file}: radio_config"
    else:
        native, layout, prefix, source = raw, "safetensors", "", str(cfg_file)
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


def verify_weights(info: ExportInfo) -> None:
    """Compare the weights file with the sha256 recorded at export; a mismatch means corruption/truncation."""
    expected = info.raw.get("weights_sha256")
    if expected and file_sha256(info.weights) != expected:
        raise ExportError(f"{str(info.weights)!r} is corrupted or truncated: its sha256 does not match "
                          f"weights_sha256 in {CONFIG_NAME} (re-export or re-download it)")


def read_weights(info: ExportInfo, verify: bool = True) -> dict[str, torch.Tensor]:
    """The export's state dict with the layout prefix removed (safetensors only; never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if verify:
        verify_weights(info)
    try:
        state = load_file(str(info.weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{str(info.weights)!r} is corrupted or truncated: {e}") from e
    foreign = [k for k in state if not k.startswith(info.prefix)]
    if foreign:
        raise ExportError(f"{str(info.weights)!r}: unexpected keys {foreign[:5]} (expected the prefix "
                          f"{info.prefix!r} of a {info.layout} export)")
    return {k[len(info.prefix):]: v for k, v in state.items()}


def build_model(config: ModelConfig, where: str) -> RADIOModel:
    """RADIOModel(config); a config this radio cannot build (e.g. an unknown normalizer) is an ExportError."""
    from radio.registry import RegistryError

    try:
        return RADIOModel(config)
    except (RegistryError, ValueError) as e:
        raise ExportError(f"{where}: {e}") from e


@torch.no_grad()
def restore_derived_buffers(model: RADIOModel) -> None:
    """Recompute the non-persistent buffers (in no weights file) of a model built on the meta device or left
    uninitialised by a loader: the input statistics from the config, and each normalizer's derived constants
    (e.g. a Hadamard matrix) from a fresh normalizer of the same kind and width. Existing buffers keep their
    device and dtype; meta ones come back on the CPU.
    """
    from radio.normalize import Normalizer

    s = model.config.student
    derived = [(model, {"input_mean": torch.tensor(s.mean, dtype=torch.float32).view(1, 3, 1, 1),
                        "input_std": torch.tensor(s.std, dtype=torch.float32).view(1, 3, 1, 1)})]
    for norm in model.normalizers.values():
        if isinstance(norm, Normalizer):
            fresh = type(norm)(norm.dim)
            persistent = set(fresh.state_dict())
            values = {n: b for n, b in fresh.named_buffers(recurse=False) if n not in persistent}
            derived.append((norm, values))
    for module, values in derived:
        for name, value in values.items():
            old = getattr(module, name)
            setattr(module, name, value if old.is_meta else value.to(old.device, old.dtype))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ExportError(f"could not rebuild {left[:5]}: not in the weights file and not derivable from the "
                          "config")


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str,
              assign: bool = False) -> None:
    """Strict load naming the missing/unexpected/mis-shaped keys and the file (assign: for meta models)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ExportError(f"{where} does not match its config: missing keys {missing[:5]}, unexpected keys "
                          f"{unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(state, assign=assign)


def load(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> RADIOModel:
    """Load an exported student (eval mode) from a native or `--format hf` directory.

    Needs none of the teacher libraries (nor transformers); never unpickles.

    Args:
        verify: check the weights file against the sha256 recorded at export (catches corruption).
    """
    info = read_export(path)
    with torch.device("meta"):  # no random initialisation: every value comes from the file or the config
        model = build_model(info.config, repr(str(info.weights.parent / CONFIG_NAME)))
    load_into(model, read_weights(info, verify=verify), repr(str(info.weights)), assign=True)
    restore_derived_buffers(model)
    model.provenance = info.raw.get("provenance", {})
    model.export_defaults = dict(info.raw.get("defaults") or {})
    return model.to(device).eval()
