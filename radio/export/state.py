"""Building a RADIOModel from a config and filling it from a state dict: shared by checkpoint reading
(radio.export.write) and export loading (radio.export.read, hf, timm).

Models are built on the meta device (no random initialisation), then every tensor must have the key and
shape (and, for exports, the dtype) of the model the config builds, with finite values; the non-persistent
buffers, in no weights file, are rebuilt from the config. Any failure is an ExportError naming the file.
"""
from __future__ import annotations

from typing import Any

import torch

from radio.export.format import ExportError
from radio.model.radio_model import ModelConfig, RADIOModel


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
    derived: list[tuple[torch.nn.Module, dict[str, torch.Tensor]]]
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


def check_state(shapes: dict[str, tuple], dtypes: dict[str, Any] | None, own: dict[str, torch.Tensor],
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


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str,
              assign: bool = False, check_dtype: bool = False) -> None:
    """Strict load naming the missing/unexpected/mis-shaped keys and the file (assign: for meta models).

    check_dtype: every tensor must also have the dtype of the model's own (as built), not be cast to it.
    """
    check_state({k: tuple(v.shape) for k, v in state.items()},
                {k: v.dtype for k, v in state.items()} if check_dtype else None, model.state_dict(), where)
    model.load_state_dict(state, assign=assign)
