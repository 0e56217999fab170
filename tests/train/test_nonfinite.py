"""Non-finite losses: a step is skipped (no update at all) and counted; too many in a row save a checkpoint and stop
the run with a message naming the teacher and partition."""
import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from radio.cli.fit import run_fit
from radio.cli.main import main
from radio.train.guard import RunGuard
from radio.train.module import DistillModule
from tests.helpers import tiny_recipe, write_recipe
from tests.train.runs import load_checkpoint, logged


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


def _recipe(synth_dir, root, steps, limit=3, every=None, lr=None):
    r = tiny_recipe(str(synth_dir / "train"), None, root, steps=steps)
    r["model"]["stability"] = {"max_nonfinite_steps": limit}
    if every:
        r["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = every
    if lr:
        r["model"]["optimizer"]["lr"] = lr
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
    assert main(["fit", "--config", str(_recipe(synth_dir, tmp_path, steps=20, every=2))]) == 1
    err = capsys.readouterr().err
    assert "non-finite for 3 steps in a row (steps 2..4" in err and "dino_v2/feature@64" in err
    assert "clip/" not in err.split("non-finite terms")[1].split(";")[0]
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert f"checkpoint saved to {ckpt}" in err
    # the step checkpoints kept are those of before the stop (the stop wrote last.ckpt only); the message offers
    # the newest from before the streak
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]
    assert f"or from {ckpt.parent / 'step=2.ckpt'}, saved before step 2" in err
    assert not (tmp_path / ".radio-run.lock").exists()  # the run's lock went with it
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
    assert g2.state_dict() == {**g.state_dict(), "streak": 0}  # a resume starts a new streak
    assert g.streak == 2 and not g2.must_stop
    assert g.observe(9, torch.tensor(1.0), {}, 16, 0, lambda t: t).loss == pytest.approx(1.0)
    assert g.streak == 0


def test_a_resume_after_a_nonfinite_stop_trains_at_the_new_lr(synth_dir, tmp_path, monkeypatch, capsys):
    """The loss is non-finite while the lr is above 1 (a stand-in for a run diverging at a too high lr)."""
    real, seen = DistillModule.partition_losses, {}

    def diverges_at_high_lr(self, images, targets):
        total, terms = real(self, images, targets)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        seen[self.global_step] = lr
        if lr > 1.0:
            terms = {k: v * float("nan") for k, v in terms.items()}
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(DistillModule, "partition_losses", diverges_at_high_lr)
    recipe = str(_recipe(synth_dir, tmp_path, steps=8, limit=2, lr=6.0))  # 2.0 at step 0 (3 warm-up steps)
    assert main(["fit", "--config", recipe]) == 1
    report = json.loads((tmp_path / "logs" / "version_0" / "health.json").read_text())
    assert "non-finite for 2 steps in a row (steps 0..1" in report["stopped"] and report["skipped_steps"] == 2
    assert math.isnan(logged(tmp_path / "logs" / "version_0", "train/loss")[0])  # nan, not a stale value
    capsys.readouterr()

    # the same lr: a new streak of 2 (not 1: the streak is not carried over)
    assert main(["fit", "--config", recipe, "--ckpt_path", "last"]) == 1
    assert "non-finite for 2 steps in a row (steps 2..3" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4

    seen.clear()
    cli = run_fit(["--config", recipe, "--ckpt_path", "last", "--model.optimizer.lr", "1e-3"])
    assert cli.trainer.global_step == 8  # trained to the end
    assert [g["initial_lr"] for g in cli.trainer.optimizers[0].param_groups] == [1e-3, 1e-3]
    assert cli.trainer.lr_scheduler_configs[0].scheduler.base_lrs == [1e-3, 1e-3]
    assert sorted(seen) == [4, 5, 6, 7] and all(0 < lr <= 1e-3 for lr in seen.values())
    loss = logged(tmp_path / "logs" / "version_2", "train/loss")
    assert sorted(loss) == [4, 5, 6, 7] and all(math.isfinite(v) for v in loss.values())
    report = json.loads((tmp_path / "logs" / "version_2" / "health.json").read_text())
    assert report["stopped"] is None and report["skipped_steps"] == 4
