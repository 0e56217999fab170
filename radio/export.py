"""Export a trained student to a self-describing directory, and load it back with `radio.load`.

Directory: `config.json` (format version, architecture, teachers and adaptor dims, preprocessing, resolution
step, provenance), `model.safetensors` (student + adaptors + normalizer statistics) and a model card
`README.md`. Loading never unpickles anything: JSON + safetensors only; checkpoints are read with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from radio.model.radio_model import FORMAT_VERSION, ModelConfig, RADIOModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ExportError(RuntimeError):
    """A checkpoint or export directory that cannot be read; the message names the file."""


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
    config = ModelConfig.from_dict(ckpt["radio_model_config"], source=f"{path}: radio_model_config")
    model = RADIOModel(config)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"checkpoint {str(path)!r} does not match its config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    model.radio_teacher_specs = ckpt.get("radio_teacher_specs", [])
    model.radio_checkpoint_step = int(ckpt.get("global_step", -1))
    return model.eval()


def export_checkpoint(ckpt_path: str | Path, out: str | Path, fmt: str = "safetensors",
                      extra: Optional[dict[str, Any]] = None) -> Path:
    """Write the student of a fit checkpoint to `out` (see module docstring). Returns the directory."""
    if fmt != "safetensors":
        raise ValueError(f"unknown export format {fmt!r}; available: safetensors")
    model = model_from_checkpoint(ckpt_path)
    return save_model(model, out, provenance={"checkpoint": str(ckpt_path), "step": model.radio_checkpoint_step,
                                              "teacher_specs": model.radio_teacher_specs, **(extra or {})})


def save_model(model: RADIOModel, out: str | Path, provenance: Optional[dict[str, Any]] = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["resolution_step"] = model.resolution_step
    config["provenance"] = provenance or {}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "radio_format_version": str(FORMAT_VERSION)})
    (out / "README.md").write_text(model_card(config))
    return out


def model_card(config: dict[str, Any]) -> str:
    s = config["student"]
    rows = "\n".join(f"| {t['name']} | {t['summary_dim'] or '-'} | {t['feature_dim']} | {t['patch_size']} | "
                     f"{t['normalizer']} |" for t in config["teachers"])
    return f"""# radio student

Agglomerative student distilled by radio from {len(config['teachers'])} teacher(s).

- architecture: {s['arch']} (width {s.get('embed_dim')}, depth {s.get('depth')}, heads {s.get('num_heads')}), patch {s['patch_size']}
- input: float RGB in [0, 1], height and width multiples of {config['resolution_step']}; normalisation mean {s['mean']}, std {s['std']}
- format version: {config['format_version']}

| teacher | summary dim | feature dim | teacher patch | normalizer |
|---|---|---|---|---|
{rows}

```python
import radio
model = radio.load("THIS_DIRECTORY")
out = model(images)                       # out.summary (B, C), out.features (B, N, C)
per_teacher = model(images, adaptors=[{', '.join(repr(t['name']) for t in config['teachers'])}])
```
"""


def load(path: str | Path, device: str | torch.device = "cpu") -> RADIOModel:
    """Load an exported student (eval mode). Needs none of the teacher libraries; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise ExportError(f"{str(f)!r} is missing; is {str(path)!r} a radio export directory?")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{str(cfg_file)!r} is not valid JSON: {e}") from e
    extra_keys = {"resolution_step", "provenance"}
    config = ModelConfig.from_dict({k: v for k, v in raw.items() if k not in extra_keys}, source=str(cfg_file))
    model = RADIOModel(config)
    try:
        state = load_file(str(w_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{str(w_file)!r} is corrupted or truncated: {e}") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"{str(w_file)!r} does not match {str(cfg_file)!r}: missing keys {missing[:5]}, "
                          f"unexpected keys {unexpected[:5]}")
    model.provenance = raw.get("provenance", {})
    return model.to(device).eval()
