"""The SigLIP (timm trunk), SAM and transformers teachers in a real fit: they give targets and never learn."""
import copy

import torch

import teachers
from eval.report import read_metrics_csv
from radio.cli.fit import run_fit
from tests.helpers import TINY_HF, TINY_SAM, TINY_SIGLIP, tiny_recipe, write_recipe


def test_new_families_receive_no_gradient_and_do_not_change_during_a_fit(synth_dir, tmp_path):
    specs = [TINY_SIGLIP, {**TINY_SAM, "options": {"features": "pre_neck"}}, TINY_HF]  # options via the CLI
    recipe = tiny_recipe(str(synth_dir / "train"), str(synth_dir / "val"), tmp_path, steps=6)
    recipe["model"]["teachers"] = copy.deepcopy(specs)
    cli = run_fit(["--config", str(write_recipe(recipe, tmp_path / "recipe.yaml"))])
    assert cli.trainer.global_step == 6
    series = read_metrics_csv(cli.trainer.logger.log_dir + "/metrics.csv")
    for name in ("siglip", "sam", "hf"):
        assert all(torch.isfinite(torch.tensor(v)) for _, v in series[f"train/{name}/feature"])
    assert "train/sam/summary" not in series and "train/siglip/summary" in series
    module = cli.model
    opt_params = {id(p) for g in cli.trainer.optimizers[0].param_groups for p in g["params"]}
    for spec in specs:
        t, fresh = module.teachers[spec["name"]], teachers.build(copy.deepcopy(spec))
        params = list(t.named_parameters())
        assert params
        for (k, p), (_, q) in zip(params, fresh.named_parameters(), strict=True):
            assert torch.equal(p, q), f"{spec['name']}.{k} changed"
            assert p.grad is None and not p.requires_grad and id(p) not in opt_params
