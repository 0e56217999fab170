"""Checkpoints are only ever unpickled with weights_only=True: a checkpoint carrying a code-running pickle is refused
by `radio fit --ckpt_path` and `radio export`, and its payload never runs; radio's own checkpoints load that way."""
import pytest
import torch

from radio.cli.fit import run_fit
from radio.cli.main import main
from tests.helpers import tiny_recipe, write_recipe


class _Payload:
    """Unpickling this creates `marker` (what a malicious checkpoint would do with a shell command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _malicious(path, marker):
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "radio_model_config": {}, "global_step": 3,
                "pytorch-lightning_version": "2.6.6", "evil": _Payload(marker)}, path)
    return path


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "pwned"
    torch.load(_malicious(tmp_path / "evil.ckpt", marker), weights_only=False)  # an unrestricted load runs it
    assert marker.exists()


@pytest.mark.parametrize("how", ["path", "last"])
def test_fit_refuses_a_pickle_payload_and_runs_nothing(synth_dir, tmp_path, capsys, how):
    marker = tmp_path / "pwned"
    recipe = write_recipe(tiny_recipe(str(synth_dir / "train"), None, tmp_path, steps=2), tmp_path / "r.yaml")
    (tmp_path / "checkpoints").mkdir()
    evil = _malicious(tmp_path / "checkpoints" / "last.ckpt", marker)
    arg = str(evil) if how == "path" else "last"  # "last" is found and loaded by the Trainer, a path by the CLI
    assert main(["fit", "--config", str(recipe), "--ckpt_path", arg]) == 2
    err = capsys.readouterr().err
    assert "refusing to load the checkpoint" in err and "weights_only=True" in err
    assert "nothing in it was executed" in err
    assert not marker.exists()


def test_export_refuses_a_pickle_payload(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _malicious(tmp_path / "evil.ckpt", marker)
    assert main(["export", str(evil), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and "weights_only=True" in err
    assert not marker.exists() and not (tmp_path / "out" / "model.safetensors").exists()


def test_resume_loads_radio_checkpoints_with_weights_only(synth_dir, tmp_path, monkeypatch):
    recipe = write_recipe(tiny_recipe(str(synth_dir / "train"), None, tmp_path, steps=2), tmp_path / "r.yaml")
    run_fit(["--config", str(recipe)])
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    cli = run_fit(["--config", str(recipe), "--ckpt_path", "last", "--trainer.max_steps", "4"])
    assert cli.trainer.global_step == 4 and calls and all(w is True for w in calls), calls
