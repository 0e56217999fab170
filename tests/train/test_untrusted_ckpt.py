"""A checkpoint is a file the user did not write: `radio fit/validate --ckpt_path` does not merge its
hyper-parameters over the recipe (LightningCLI would), so a teacher injected there (an hf teacher whose model
directory ships code, with trust_remote_code: true) is never built and its code never runs; the recipe says what
is built, and the checkpoint's weights still load."""
import pytest
import torch

from radio.cli.fit import run_fit
from tests.helpers import tiny_recipe, write_recipe
from tests.remote_code import isolate_hf_modules, remote_spec, write_remote_model


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory):
    """(recipe with a val split, its 2-step checkpoint)."""
    root = tmp_path_factory.mktemp("untrusted_ckpt")
    recipe = write_recipe(tiny_recipe(str(synth_dir / "train"), str(synth_dir / "val"), root, steps=2),
                          root / "recipe.yaml")
    return recipe, run_fit(["--config", str(recipe)]).trainer.checkpoint_callback.last_model_path


def _tampered(ckpt, out, directory):
    """The checkpoint with an hf teacher asking for its model's own code added to its hyper-parameters, and
    another learning rate: still a plain file that torch.load(weights_only=True) reads."""
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = raw["hyper_parameters"]
    hp["teachers"].append({**remote_spec(directory, trust=True), "summary_weight": 1.0, "feature_weight": 1.0,
                           "normalizer": "none", "mosaic": False})
    hp["optimizer"]["lr"] = 0.5
    torch.save(raw, out)
    assert torch.load(out, map_location="cpu", weights_only=True)["hyper_parameters"]["teachers"][-1]["name"] == "hf"
    return out


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_checkpoint_hyper_parameters_never_reach_the_build(trained, tmp_path, monkeypatch, subcommand):
    isolate_hf_modules(monkeypatch, tmp_path)
    marker = tmp_path / "PWNED"
    recipe, ckpt = trained
    evil = _tampered(ckpt, tmp_path / "evil.ckpt", write_remote_model(tmp_path / "remote", marker))
    extra = ["--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path)] if subcommand == "fit" else []
    cli = run_fit(["--config", str(recipe), "--ckpt_path", str(evil), *extra], subcommand=subcommand)
    assert not marker.exists()
    assert [e.name for e in cli.model.entries] == ["clip", "dino_v2"]  # the recipe's teachers only
    assert cli.model.optim_cfg.lr == 2e-3  # the recipe's, not the checkpoint's 0.5
    if subcommand == "fit":
        assert cli.trainer.global_step == 3  # resumed from the checkpoint's step 2
    else:
        trained_weights = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.equal(p.detach(), trained_weights[n]) for n, p in cli.model.named_parameters()
                   if n in trained_weights)

