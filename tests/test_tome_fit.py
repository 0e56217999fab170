"""Token merging end to end: a recipe that merges while training, then `radio export` with merge defaults."""
import json
import math

import torch

from radio.cli.fit import run_fit
from radio.cli.main import main
from radio.export import load, read_checkpoint
from tests.helpers import tiny_recipe, write_recipe


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
    model = load(out)
    x = torch.rand(2, 3, 64, 64)  # 4 x 4 grid, prefix 4
    with torch.no_grad():
        assert model(x).features.shape == (2, 10, 64)
        assert model(x, adaptors=["dino_v2"])["dino_v2"].features.shape == (2, 10, 48)
        merged = model.backbone.forward_merged((x - model.input_mean) / model.input_std)
        assert merged.tokens.shape[1] == 4 + 16 - 2 - 2
