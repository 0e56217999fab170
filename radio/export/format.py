"""What every part of radio.export shares: file names, the error and warning types, the `verify` default,
checksums, JSON reading and writing, and the parsing of a native config.json into a ModelConfig.

An export is untrusted input. `config.json` records two checksums: `weights_sha256` (of model.safetensors) and
`config_sha256` (of config.json's own content without the two checksums; format version 3 on), so a corrupted
or edited file is an error, not a silently different model. Whatever the checksums say, every config value is
type- and range-checked (`parse_export_config`, through ModelConfig.from_dict).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radio.model.radio_model import ModelConfig

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
_DEFAULT_VERIFY: contextvars.ContextVar[bool | None] = contextvars.ContextVar("radio_verify", default=None)


@contextlib.contextmanager
def verification(verify: bool | None) -> Iterator[None]:
    """Within the block, loads that are not given `verify` use this one (e.g. `radio eval` runs under True)."""
    token = _DEFAULT_VERIFY.set(verify)
    try:
        yield
    finally:
        _DEFAULT_VERIFY.reset(token)


def verify_mode(verify: bool | None) -> bool | None:
    """`verify`, or the `verification` in force when it is None."""
    return _DEFAULT_VERIFY.get() if verify is None else verify


# ---- checksums and JSON -----------------------------------------------------------------------------------
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


def write_json(path: Path, obj: dict[str, Any]) -> None:
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


# ---- the native config ------------------------------------------------------------------------------------
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    derived: dict[str, tuple[Any, Any]] = {"resolution_step": (raw.get("resolution_step"), s.patch_size),
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
