"""ONNX export of a student with dynamic batch, height and width; a check against PyTorch with onnxruntime.

The graph takes `images` (B, 3, H, W) float32 in [0, 1] (H, W multiples of the resolution step, up to the
max resolution) and returns, in order: `summary` (B, C_summary), `features` (B, N, C), then for each adaptor
`<name>.summary` (B, C_s) when the teacher has one and `<name>.features` (B, N, C_t), in the teacher's space.

Exported with the dynamo exporter (`torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`): the CPE's
inference path (bilinear antialiased resize of the position grid to max(h, w), then a top-left window) becomes
an ONNX `Resize` (antialias=1) on a `Max` of the symbolic grid sides followed by `Slice`; onnxruntime matches
PyTorch on it (tests/export/test_onnx.py). The legacy TorchScript exporter bakes the grid size into the graph.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from radio.export.format import ExportError
from radio.model.radio_model import RADIOModel
from radio.types import float_images

INPUT_NAME = "images"
# Weights above this go to an external data file next to the graph (the protobuf limit is 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30
TOLERANCE = 1e-4


class OnnxGraph(nn.Module):
    """The exported function: images -> backbone outputs, then every adaptor's outputs (flat tuple)."""

    def __init__(self, model: RADIOModel) -> None:
        super().__init__()
        self.model = model
        self.heads = list(model.adaptors)

    def output_names(self) -> list[str]:
        names = ["summary", "features"]
        for n in self.heads:
            has_summary = self.model.adaptors[n].summary is not None
            names += ([f"{n}.summary"] if has_summary else []) + [f"{n}.features"]
        return names

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        tokens = self.model.forward_tokens(images)
        outs = [tokens.summary.flatten(1), tokens.patches]
        for n in self.heads:
            a = self.model.adapt(n, tokens)
            outs += ([a.summary] if a.summary is not None else []) + [a.features]
        return tuple(outs)


def _example_grid(max_grid: int) -> tuple[int, int]:
    # Sides >= 2 (torch.export specializes sizes 0 and 1), unequal, and below the full position grid.
    return (2, 3) if max_grid >= 4 else (2, 2)


def export_onnx(model: RADIOModel, path: str | Path, opset: int | None = None) -> list[str]:
    """Write `model` (eval, float32) as ONNX with dynamic batch/height/width; returns the output names."""
    path = Path(path)
    graph = OnnxGraph(model.float().eval()).eval()
    step, max_grid = model.resolution_step, model.backbone.cpe.max_grid
    gh, gw = _example_grid(max_grid)
    example = torch.rand(2, 3, gh * step, gw * step)
    h = torch.export.Dim("grid_h", min=1, max=max_grid)
    w = torch.export.Dim("grid_w", min=1, max=max_grid)
    names = graph.output_names()
    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > EXTERNAL_DATA_BYTES
    with torch.no_grad():
        torch.onnx.export(graph, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                          output_names=names, opset_version=opset, external_data=big, verbose=False,
                          dynamic_shapes={"images": {0: torch.export.Dim("batch"), 2: step * h, 3: step * w}})
    return names


def check_sizes(model: RADIOModel) -> list[tuple[int, int]]:
    """Two input sizes for the check: a square one and a non-square one, within the position grid."""
    step, max_grid = model.resolution_step, model.backbone.cpe.max_grid
    side = max(2, min(max_grid, 224 // step))
    return [(side * step, side * step), (side * step, max(1, (side * 2) // 3) * step)]


def run_onnx(path: str | Path, images: Tensor) -> list[Tensor]:
    """Run the graph with onnxruntime on the CPU (images as a student takes them: radio.types.float_images)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {INPUT_NAME: float_images(images, str(path)).float().numpy()})]


@torch.no_grad()
def compare_onnx(model: RADIOModel, path: str | Path, sizes: Sequence[tuple[int, int]],
                 batch: int = 2, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per 'HxW' size: max abs difference between onnxruntime and PyTorch over all outputs ("max_abs_diff"),
    and the largest PyTorch output magnitude ("max_abs_value")."""
    graph = OnnxGraph(model.float().eval())
    g = torch.Generator().manual_seed(seed)
    result = {}
    for hh, ww in sizes:
        x = torch.rand(batch, 3, hh, ww, generator=g)
        ref, got = graph(x), run_onnx(path, x)
        if len(ref) != len(got):
            raise ValueError(f"{path}: onnxruntime returned {len(got)} outputs, PyTorch {len(ref)}")
        result[f"{hh}x{ww}"] = {"max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(ref, got)),
                                "max_abs_value": max(float(a.abs().max()) for a in ref)}
    return result


def check_onnx(model: RADIOModel, path: str | Path, sizes: Sequence[tuple[int, int]] | None = None,
               tolerance: float = TOLERANCE) -> dict[str, dict[str, float]]:
    """`compare_onnx` at `check_sizes` (or `sizes`); raises ExportError when a difference reaches
    `tolerance * max(1, max_abs_value)` (absolute for outputs up to 1, else relative to the largest)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ExportError("checking the ONNX export needs onnxruntime (pip install onnxruntime); "
                          "or skip the check with --no-check") from e
    result = compare_onnx(model, path, sizes or check_sizes(model))
    bad = {k: r for k, r in result.items()
           if not r["max_abs_diff"] < tolerance * max(1.0, r["max_abs_value"])}
    if bad:
        raise ExportError(f"{path}: onnxruntime differs from PyTorch: {bad} (tolerance {tolerance}, "
                          "relative to the largest output above 1)")
    return result
