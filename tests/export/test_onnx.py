"""ONNX export with dynamic batch/height/width, checked against PyTorch with onnxruntime."""
import json

import onnx
import pytest
import torch

from radio.cli.main import main
from radio.export import ExportError, load
from radio.export.onnx import check_onnx, compare_onnx, run_onnx
from tests.helpers import reference_model

pytestmark = pytest.mark.slow  # the module's fixture exports to ONNX


@pytest.fixture(scope="module")
def onnx_dir(fit_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "student"
    assert main(["export", fit_checkpoint, "--out", str(out), "--format", "onnx"]) == 0
    return out


def test_onnx_matches_pytorch_at_training_and_unseen_resolutions(fit_checkpoint, onnx_dir):
    ref = reference_model(fit_checkpoint)
    # 64x64: the training resolution; 48x112: never used in training (and not square); 256x256: the full grid
    result = compare_onnx(ref, onnx_dir / "model.onnx", [(64, 64), (48, 112), (256, 256)], batch=3)
    assert all(r["max_abs_diff"] < 1e-4 for r in result.values()), result
    cfg = json.loads((onnx_dir / "config.json").read_text())
    check = cfg["onnx"]["check"]  # the export's own check, at two more sizes
    assert len(check) == 2 and all(r["max_abs_diff"] < 1e-4 for r in check.values())
    x = torch.rand(1, 3, 32, 80)
    outputs = run_onnx(onnx_dir / "model.onnx", x)
    names = cfg["onnx"]["outputs"]
    assert names == ["summary", "features", "clip.summary", "clip.features", "dino_v2.summary", "dino_v2.features"]
    with torch.no_grad():
        adapted = ref(x, adaptors=["clip", "dino_v2"])
    assert outputs[names.index("dino_v2.features")].shape == adapted["dino_v2"].features.shape == (1, 10, 48)


def test_onnx_graph_has_dynamic_batch_height_width(onnx_dir):
    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    (inp,) = graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "images" and dims[1].dim_value == 3
    assert all(dims[i].dim_param and not dims[i].dim_value for i in (0, 2, 3))


def test_onnx_directory_is_not_mistaken_for_a_pytorch_export(onnx_dir):
    assert "ort.InferenceSession(" in (onnx_dir / "README.md").read_text()
    with pytest.raises(ExportError, match="is an ONNX export; run model.onnx with onnxruntime"):
        load(onnx_dir)


def test_onnx_check_fails_when_the_graph_does_not_match_the_model(fit_checkpoint, onnx_dir):
    other = reference_model(fit_checkpoint)
    with torch.no_grad():
        other.backbone.cpe.pos_embed.mul_(1.1)  # a 10% change of the position grid alone
    with pytest.raises(ExportError, match="onnxruntime differs from PyTorch"):
        check_onnx(other, onnx_dir / "model.onnx", sizes=[(48, 112)])
