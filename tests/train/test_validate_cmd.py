"""`radio validate`: LightningCLI's validate subcommand on a checkpoint, with the recipe it was trained with."""
import pytest
import torch

from radio.cli.fit import run_fit
from radio.cli.main import main
from tests.helpers import fit_tiny


@pytest.fixture(scope="module")
def fitted(synth_dir, tmp_path_factory):
    recipe, cli = fit_tiny(synth_dir, tmp_path_factory.mktemp("validate_cmd"), steps=6)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    return recipe, cli.trainer.checkpoint_callback.last_model_path, metrics


def test_validate_reproduces_the_fits_last_validation(fitted):
    recipe, ckpt, at_end = fitted
    assert "val/loss" in at_end and any(k.endswith("/fidelity") for k in at_end)
    cli = run_fit(["--config", str(recipe), "--ckpt_path", ckpt], subcommand="validate")
    again = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    assert again.keys() == at_end.keys()
    for k, v in at_end.items():
        assert again[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # the weights really came from the checkpoint: they are the trained ones
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for name, p in cli.model.named_parameters():
        if name in trained:
            assert torch.equal(p.detach(), trained[name]), name


def test_radio_validate_command(fitted, capsys):
    recipe, ckpt, _ = fitted
    assert main(["validate", "--config", str(recipe), "--ckpt_path", ckpt]) == 0
    assert "val/loss" in capsys.readouterr().out
    assert main(["validate", "--config", str(recipe), "--ckpt_path", "last"]) == 0  # the run's last.ckpt
    assert "val/loss" in capsys.readouterr().out
    assert main(["validate", "--config", str(recipe), "--ckpt_path", str(ckpt) + ".missing"]) != 0
