"""Non-finite losses: a step is skipped (no update at all) and counted; too many in a row save a checkpoint and stop
the run with a message naming the teacher and partition."""
import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from radio.cli.main import main
from radio.cli.fit import run_fit
from radio.train.guard import RunGuard
from radio.train.module import DistillModule
from tests.helpers import tiny_recipe, write_recipe
from tests.train.runs import load_checkpoint


class Snapshots(Callback):
    """Test instrumentation: a copy of the trainable parameters at the start of every step."""

    seen: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        Snapshots.seen[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.named_parameters()}


def _nan_at(monkeypatch, steps, teacher="dino_v2"):
    real = DistillModule.partition_losses

    def poisoned(self, images, targets):
        total, terms = real(self, images, targets)
        if self.global_step in steps:
            terms[f"{teacher}/feature"] = terms[f"{teacher}/feature"] * float("nan")
            total = total + terms[f"{teacher}/feature"]
        return total, terms

    monkeypatch.setattr(DistillModule, "partition_losses", poisoned)


def _recipe(synth_dir, root, steps, limit=3):
    r = tiny_recipe(str(synth_dir / "train"), None, root, steps=steps)
    r["model"]["stability"] = {"max_nonfinite_steps": limit}
    r["trainer"]["callbacks"].append({"class_path": "tests.train.test_nonfinite.Snapshots"})
    return write_recipe(r, root / "r.yaml")


def test_a_nonfinite_step_changes_nothing_and_is_counted(synth_dir, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {3})
    Snapshots.seen = {}
    cli = run_fit(["--config", str(_recipe(synth_dir, tmp_path, steps=6))])
    assert cli.trainer.global_step == 6
    seen = Snapshots.seen
    for k in seen[3]:  # step 3 changed no parameter; its neighbours did
        assert torch.equal(seen[3][k], seen[4][k]), k
    assert any(not torch.equal(seen[2][k], seen[3][k]) for k in seen[2])
    assert any(not torch.equal(seen[4][k], seen[5][k]) for k in seen[4])
    opt = cli.trainer.optimizers[0]
    assert {int(opt.state[p]["step"]) for g in opt.param_groups for p in g["params"]} == {5}  # 6 steps, 1 skipped
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    report = json.loads((Path(cli.trainer.log_dir) / "health.json").read_text())
    assert report["skipped_steps"] == 1 and report["stopped"] is None


def test_too_many_nonfinite_steps_save_and_stop(synth_dir, tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, {2, 3, 4})
    assert main(["fit", "--config", str(_recipe(synth_dir, tmp_path, steps=20))]) == 1
    err = capsys.readouterr().err
    assert "non-finite for 3 steps in a row (steps 2..4" in err and "dino_v2/feature@64" in err
    assert "clip/" not in err.split("non-finite terms")[1].split(";")[0]
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert f"checkpoint saved to {ckpt}" in err
    saved = load_checkpoint(ckpt)
    assert saved["global_step"] == 5 and saved["radio_guard"]["skipped"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    report = json.loads(next(tmp_path.rglob("health.json")).read_text())
    assert report["skipped_steps"] == 3 and "dino_v2/feature@64" in report["stopped"]


def test_guard_skips_everywhere_when_another_rank_is_nonfinite():
    g = RunGuard(max_nonfinite_steps=2)
    other_rank_nan = (lambda t: t + torch.tensor([0.0, 1.0, 1.0, 16.0, 1.0], dtype=t.dtype))
    v = g.observe(7, torch.tensor(0.5), {"clip/feature@64": torch.tensor(0.5)}, 16, 0, other_rank_nan)
    assert v.skip and math.isnan(v.loss) and v.reads == 32 and v.bad == 1
    assert g.bad_terms == ["(another rank)"] and not g.must_stop
    v = g.observe(8, torch.tensor(float("inf")), {"clip/summary@64": torch.tensor(float("inf"))}, 16, 0,
                  lambda t: t)
    assert v.skip and g.must_stop and g.bad_terms == ["clip/summary@64"] and g.first_bad_step == 7
    g2 = RunGuard(2)
    g2.load_state_dict(g.state_dict())
    assert g2.state_dict() == g.state_dict()
    assert g.observe(9, torch.tensor(1.0), {}, 16, 0, lambda t: t).loss == pytest.approx(1.0)
    assert g.streak == 0
