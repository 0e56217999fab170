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

An export is untrusted input. `config.json` records two checksums: `weights_sha256` (of model.safetensors) and
`config_sha256` (of config.json's own content without the two checksums; format version 3 on), so a corrupted
or edited file is an error, not a silently different model. Without them the export loads with a warning that
it is unverified (`verify=None`, the default), or fails (`verify=True`, what `radio eval` uses). Whatever the
checksums say, every config value is type- and range-checked (ModelConfig.from_dict) and every tensor must
have the key, shape and dtype of the model the config builds, with finite values; any failure is an
`ExportError` naming the file and the key.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import torch

from radio.model.radio_model import FORMAT_VERSION, ModelConfig, RADIOModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
FORMATS = ("safetensors", "hf", "onnx")
HF_MODEL_TYPE = "radio_student"  # transformers already has a "radio" model type (NVIDIA's C-RADIO)
HF_PREFIX = "model."
# Keys of a native config.json besides the ModelConfig fields; derived from it or informational.
EXPORT_KEYS = ("resolution_step", "preprocessing", "defaults", "provenance", "weights_sha256", "config_sha256")
CHECKSUM_KEYS = ("weights_sha256", "config_sha256")
CONFIG_CHECKSUM_SINCE = 3  # the first format version that records config_sha256
PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")


class ExportError(RuntimeError):
    """A checkpoint or export directory that cannot be read; the message names the file."""


class UnverifiedExportWarning(UserWarning):
    """An export loaded without a checksum to check it against: corruption would go unnoticed."""


# The `verify` of radio.load (and of the HF / timm loaders) when the caller gives none: None checks the
# checksums that are present and warns about missing ones; True also fails on a missing one; False skips them.
_DEFAULT_VERIFY: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("radio_verify", default=None)


@contextlib.contextmanager
def verification(verify: Optional[bool]) -> Iterator[None]:
    """Within the block, loads that are not given `verify` use this one (e.g. `radio eval` runs under True)."""
    token = _DEFAULT_VERIFY.set(verify)
    try:
        yield
    finally:
        _DEFAULT_VERIFY.reset(token)


def _verify_mode(verify: Optional[bool]) -> Optional[bool]:
    return _DEFAULT_VERIFY.get() if verify is None else verify


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
        config["config_sha256"] = config_sha256(config)
        save_weights(model, out / WEIGHTS_NAME)
        config["weights_sha256"] = file_sha256(out / WEIGHTS_NAME)
        _write_json(out / CONFIG_NAME, config)
    elif fmt == "hf":
        from radio.hf import save_hf

        config["config_sha256"] = config_sha256(config)
        save_hf(model, out, config)
    elif fmt == "onnx":
        from radio.onnx_export import check_onnx, export_onnx

        outputs = export_onnx(model, out / ONNX_NAME)
        config["onnx"] = {"file": ONNX_NAME, "input": "images", "outputs": outputs,
                          "dynamic_axes": {"images": ["batch", "height", "width"]}}
        if verify_onnx:
            config["onnx"]["check"] = check_onnx(model, out / ONNX_NAME)
        config["config_sha256"] = config_sha256(config)
        _write_json(out / CONFIG_NAME, config)
    else:
        raise ExportError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    (out / "README.md").write_text(model_card(config, fmt=fmt, report=report))
    return out


def export_config(model: RADIOModel, provenance: Optional[dict[str, Any]] = None,
                  num_tokens: Optional[int] = None) -> dict[str, Any]:
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


def save_model(model: RADIOModel, out: str | Path, provenance: Optional[dict[str, Any]] = None) -> Path:
    """Native export of an in-memory model (safetensors layout)."""
    return export_model(model, out, "safetensors", provenance=provenance)


def save_weights(model: RADIOModel, path: Path, prefix: str = "") -> None:
    from safetensors.torch import save_file

    state = {prefix + k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "radio_format_version": str(FORMAT_VERSION)})


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of a native config's content without its checksums (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in config.items() if k not in CHECKSUM_KEYS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


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
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    for key in ("defaults", "preprocessing", "provenance", "onnx"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ExportError(f"{source}: {key} must be a JSON object, got {type(raw[key]).__name__}")
    for key in CHECKSUM_KEYS:
        if raw.get(key) is not None and not (isinstance(raw[key], str) and _SHA256.fullmatch(raw[key])):
            raise ExportError(f"{source}: {key} must be a sha256 (64 hex digits), got {raw[key]!r:.80}")
    budget = (raw.get("defaults") or {}).get("num_tokens")
    if "tome" not in d and budget is not None:  # written before ModelConfig.tome: the budget was only here
        d["tome"] = {"num_tokens": budget}
    try:
        config = ModelConfig.from_dict(d, source=source)
    except (ValueError, TypeError) as e:
        raise ExportError(str(e)) from e
    s = config.student
    derived = {"resolution_step": (raw.get("resolution_step"), s.patch_size),
               "defaults.num_tokens": (budget, config.tome.num_tokens)}
    pre = raw.get("preprocessing") or {}
    for key, value in (("mean", list(s.mean)), ("std", list(s.std)), ("resolution_step", s.patch_size),
                       ("max_resolution", s.max_resolution)):
        derived[f"preprocessing.{key}"] = (pre.get(key), value)
    for key, (found, want) in derived.items():
        if found is not None and (found != want or type(found) is not type(want)):
            raise ExportError(f"{source}: {key} is {found!r:.80}, which does not match the model's "
                              f"configuration ({want!r})")
    return config


def read_export(path: str | Path, verify: Optional[bool] = None) -> ExportInfo:
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
    if (isinstance(native, dict) and not newer and _verify_mode(verify) is not False
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


def verify_weights(info: ExportInfo, verify: Optional[bool] = None) -> None:
    """Compare the weights file with the sha256 recorded at export; a mismatch means corruption/truncation.

    verify: None (default: the `verification` in force, normally None) checks the checksums present and warns
    (UnverifiedExportWarning) about a missing one; True makes a missing checksum an error; False checks nothing.
    The config's own checksum is compared by `read_export`; here a missing one counts from format version 3.
    """
    mode = _verify_mode(verify)
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


def read_weights(info: ExportInfo, verify: Optional[bool] = None) -> dict[str, torch.Tensor]:
    """The export's state dict with the layout prefix removed (safetensors only; never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    verify_weights(info, verify)
    try:
        state = load_file(str(info.weights))
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as e:
        raise ExportError(f"{str(info.weights)!r} is corrupted or truncated: {e}") from e
    foreign = [k for k in state if not k.startswith(info.prefix)]
    if foreign:
        raise ExportError(f"{str(info.weights)!r}: unexpected keys {foreign[:5]} (expected the prefix "
                          f"{info.prefix!r} of a {info.layout} export)")
    return {k[len(info.prefix):]: v for k, v in state.items()}


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
    foreign = [k for k in found if not k.startswith(info.prefix)]
    if foreign:
        raise ExportError(f"{str(info.weights)!r}: unexpected keys {foreign[:5]} (expected the prefix "
                          f"{info.prefix!r} of a {info.layout} export)")
    own = model.state_dict()
    found = {k[len(info.prefix):]: v for k, v in found.items()}
    _check_state({k: v[1] for k, v in found.items()}, {k: v[0] for k, v in found.items()}, own,
                 repr(str(info.weights)))


_SAFE_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
                "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                "F64": torch.float64}


def _check_state(shapes: dict[str, tuple], dtypes: Optional[dict[str, Any]], own: dict[str, torch.Tensor],
                 where: str) -> None:
    """Missing, unexpected, mis-shaped and (with `dtypes`) mis-typed keys, as one ExportError."""
    missing = [k for k in own if k not in shapes]
    unexpected = [k for k in shapes if k not in own]
    bad_shapes = [f"{k}: {tuple(shapes[k])} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in shapes and tuple(shapes[k]) != tuple(v.shape)]
    bad_dtypes = [f"{k}: {dtypes[k]} vs {v.dtype}" for k, v in own.items()
                  if dtypes is not None and k in dtypes and dtypes[k] != v.dtype]
    if missing or unexpected or bad_shapes or bad_dtypes:
        raise ExportError(f"{where} does not match its config: missing keys {missing[:5]}, unexpected keys "
                          f"{unexpected[:5]}, shape mismatches {bad_shapes[:5]}"
                          + (f", dtype mismatches {bad_dtypes[:5]}" if bad_dtypes else ""))


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """A NaN or infinity in a floating-point tensor is an ExportError naming the first keys."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ExportError(f"{where}: non-finite values (NaN or infinity) in {bad[:5]}")


def build_model(config: ModelConfig, where: str) -> RADIOModel:
    """RADIOModel(config); a config this radio cannot build (e.g. an unknown normalizer) is an ExportError."""
    from radio.registry import RegistryError

    try:
        return RADIOModel(config)
    except (RegistryError, ValueError) as e:
        raise ExportError(f"{where}: {e}") from e
    except Exception as e:  # anything else the checks of ModelConfig.from_dict let through
        raise ExportError(f"{where}: cannot build the model this config describes: {type(e).__name__}: "
                          f"{e}") from e


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
              assign: bool = False, check_dtype: bool = False) -> None:
    """Strict load naming the missing/unexpected/mis-shaped keys and the file (assign: for meta models).

    check_dtype: every tensor must also have the dtype of the model's own (as built), not be cast to it.
    """
    _check_state({k: tuple(v.shape) for k, v in state.items()},
                 {k: v.dtype for k, v in state.items()} if check_dtype else None, model.state_dict(), where)
    model.load_state_dict(state, assign=assign)


def load(path: str | Path, device: str | torch.device = "cpu", verify: Optional[bool] = None) -> RADIOModel:
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
