"""Token merging end to end: a recipe that merges while training, `radio export` with merge defaults, older
exports' budget, and the ONNX graph with in-network merging."""
import json
import math

import pytest
import torch

from radio.cli.fit import run_fit
from radio.cli.main import main
from radio.export import load, read_checkpoint, save_model
from radio.export.onnx import check_onnx, export_onnx
from radio.model import ModelConfig, RADIOModel, StudentConfig, TeacherHead
from tests.helpers import tiny_recipe, write_recipe

TINY = dict(arch="custom", embed_dim=32, depth=2, num_heads=2, patch_size=8, max_resolution=64, register_multiple=4)


def test_fit_with_training_merges_then_export_with_a_token_budget(synth_dir, tmp_path, capsys):
    recipe = tiny_recipe(str(synth_dir / "train"), None, tmp_path, steps=4)
    recipe["model"]["student"].update(train_merge_r=3, train_merge_schedule="decreasing")
    cli = run_fit(["--config", str(write_recipe(recipe, tmp_path / "recipe.yaml"))])
    module = cli.model
    assert module.model.backbone.train_merge == (6, 0)  # depth 2, decreasing from 2r to 0
    loss = float(cli.trainer.callback_metrics["train/loss"])
    assert math.isfinite(loss)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    student_cfg = read_checkpoint(ckpt)["radio_model_config"]["student"]
    assert student_cfg["train_merge_r"] == 3 and student_cfg["train_merge_schedule"] == "decreasing"

    out = tmp_path / "student"
    assert main(["export", ckpt, "--out", str(out), "--num-tokens", "10", "--merge-r", "2"]) == 0
    capsys.readouterr()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tome"] == {"r": 2, "schedule": "constant", "num_tokens": 10}
    assert cfg["defaults"] == {"num_tokens": 10}
    assert "default output-token budget: 10" in (out / "README.md").read_text()
    model = load(out)
    x = torch.rand(2, 3, 64, 64)  # 4 x 4 grid, prefix 4
    with torch.no_grad():
        assert model(x).features.shape == (2, 10, 64)
        assert model(x, adaptors=["dino_v2"])["dino_v2"].features.shape == (2, 10, 48)
        merged = model.backbone.forward_merged((x - model.input_mean) / model.input_std)
        assert merged.tokens.shape[1] == 4 + 16 - 2 - 2


def _tiny_model() -> RADIOModel:
    torch.manual_seed(0)
    return RADIOModel(ModelConfig(StudentConfig(**TINY), [TeacherHead("a", 16, 24)])).eval()


def test_an_export_from_before_tome_keeps_its_budget(tmp_path):
    out = save_model(_tiny_model(), tmp_path / "s")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["tome"], cfg["config_sha256"]  # as exports were written before tome and the config checksum
    cfg["format_version"] = 2
    cfg["defaults"] = {"num_tokens": 12}  # how exports stored the budget before ModelConfig.tome
    (out / "config.json").write_text(json.dumps(cfg))
    model = load(out)
    assert model.config.tome.num_tokens == 12 and model.export_defaults == {"num_tokens": 12}
    assert model(torch.rand(1, 3, 40, 48)).features.shape == (1, 12, 32)


@pytest.mark.slow
def test_onnx_graph_carries_in_network_merging(tmp_path):
    model = _tiny_model()
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        plain = model(x).features
        model.set_token_merging(r=5)
        merged = model(x).features
    assert not torch.allclose(plain, merged, atol=1e-3)  # merging is on in the exported function
    export_onnx(model, tmp_path / "m.onnx")
    result = check_onnx(model, tmp_path / "m.onnx", sizes=[(64, 48), (32, 64)])  # raises above 1e-4
    assert all(r["max_abs_diff"] < 1e-4 for r in result.values())
