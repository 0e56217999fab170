"""Exact resume: a `radio fit` killed with SIGKILL and resumed with `--ckpt_path last` ends where an uninterrupted
run ends; checkpoints are atomic and only the last K are kept."""
import logging
import os
import signal
import subprocess
import time

import pytest
import torch

from radio.cli.fit import run_fit
from radio.train import callbacks
from radio.train.callbacks import RadioCheckpoint
from tests.helpers import tiny_recipe, write_recipe
from tests.train.runs import (
    ROOT,
    fit_command,
    fit_env,
    load_checkpoint,
    logged,
    max_abs_difference,
    only_version,
    run_fit_subprocess,
)

STEPS, EVERY, ESTIMATE = 36, 6, 16


def _recipe(synth_dir, root, workers):
    r = tiny_recipe(str(synth_dir / "train"), None, root, steps=STEPS, num_workers=workers)
    r["trainer"]["callbacks"][0]["init_args"] = {"every_n_train_steps": EVERY, "keep_last": 2}
    for t in r["model"]["teachers"]:
        t["normalizer"] = "phis"  # streamed statistics: the kill lands while they are still being estimated
    r["model"]["normalization"] = {"estimate_steps": ESTIMATE}
    r["model"]["loss"] = {"feature": "mse"}
    return write_recipe(r, root / "recipe.yaml")


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(synth_dir, tmp_path):
    ref_root, cut_root = tmp_path / "reference", tmp_path / "killed"
    ref_root.mkdir(), cut_root.mkdir()
    # the reference reads with no worker process, the interrupted run with two: the batches must not care
    reference = subprocess.Popen(fit_command(_recipe(synth_dir, ref_root, 0)), cwd=ROOT, env=fit_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    recipe = _recipe(synth_dir, cut_root, 2)
    victim = subprocess.Popen(fit_command(recipe), cwd=ROOT, env=fit_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    first = cut_root / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not first.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    _, err = victim.communicate()
    assert victim.returncode == -signal.SIGKILL, err[-3000:]
    saved = load_checkpoint(cut_root / "checkpoints" / "last.ckpt")
    k = saved["global_step"]
    assert EVERY <= k < STEPS and k % EVERY == 0  # killed mid-run, after a checkpoint
    assert saved["ShardDataModule"]["next_step"] == k
    assert not list((cut_root / "checkpoints").glob("*.tmp*"))

    run_fit_subprocess(recipe, "--ckpt_path", "last")
    assert reference.wait(timeout=240) == 0, reference.stderr.read()[-3000:]

    ref = load_checkpoint(ref_root / "checkpoints" / "last.ckpt")
    end = load_checkpoint(cut_root / "checkpoints" / "last.ckpt")
    assert ref["global_step"] == end["global_step"] == STEPS
    assert max_abs_difference(ref["state_dict"], end["state_dict"]) < 1e-5
    for name in ("clip", "dino_v2"):  # the normalizers went on estimating after the resume, then froze
        assert bool(end["state_dict"][f"model.normalizers.{name}.frozen"])
        assert torch.equal(ref["state_dict"][f"model.normalizers.{name}.count"],
                           end["state_dict"][f"model.normalizers.{name}.count"])
    # the resumed run logged steps k.. only (none twice) and the same losses as the reference there
    resumed = logged(only_version(cut_root), "train/loss")
    reference_loss = logged(only_version(ref_root), "train/loss")
    assert min(resumed) == k and sorted(resumed) == list(range(k, STEPS))
    assert max(abs(resumed[s] - reference_loss[s]) for s in resumed) < 1e-5
    kept = sorted(p.name for p in (cut_root / "checkpoints").iterdir())
    assert kept == ["last.ckpt", f"step={STEPS - EVERY}.ckpt", f"step={STEPS}.ckpt"]


def test_checkpoint_writes_are_atomic_and_stale_temporaries_go(synth_dir, tmp_path, monkeypatch):
    root = tmp_path / "run"
    recipe = tiny_recipe(str(synth_dir / "train"), None, root, steps=6)
    recipe["trainer"]["callbacks"][0]["init_args"] = {"every_n_train_steps": 2, "keep_last": 1}
    path = write_recipe(recipe, tmp_path / "r.yaml")
    (root / "checkpoints").mkdir(parents=True)
    for name in ("last.ckpt.tmp", "step=4.ckpt.tmp.4242.0badc0de", "notes.tmp"):  # old and new radio temporaries
        (root / "checkpoints" / name).write_bytes(b"torn")
    run_fit(["--config", str(path)])
    files = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert files == ["last.ckpt", "notes.tmp", "step=6.ckpt"]  # keep_last 1, radio's stale temporaries removed
    before = (root / "checkpoints" / "last.ckpt").read_bytes()

    real = RadioCheckpoint._save_checkpoint

    def dies_while_writing(self, trainer, filepath):
        def torn(path, *a, **k):
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
            raise OSError("killed while writing")
        monkeypatch.setattr(trainer, "save_checkpoint", torn)
        real(self, trainer, filepath)

    monkeypatch.setattr(RadioCheckpoint, "_save_checkpoint", dies_while_writing)
    with pytest.raises(OSError, match="killed while writing"):
        run_fit(["--config", str(path), "--ckpt_path", "last", "--trainer.max_steps", "8"])
    assert (root / "checkpoints" / "last.ckpt").read_bytes() == before  # the previous file is intact
    assert load_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_a_recipe_without_a_checkpoint_callback_gets_radio_checkpoints(synth_dir, tmp_path):
    recipe = tiny_recipe(str(synth_dir / "train"), None, tmp_path, steps=2)
    del recipe["trainer"]["callbacks"]
    cli = run_fit(["--config", str(write_recipe(recipe, tmp_path / "r.yaml"))])
    assert [type(c) for c in cli.trainer.checkpoint_callbacks] == [RadioCheckpoint]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


class Killed(Exception):
    """Stands for the process dying at that moment."""


def _kill_at(phase):
    """An atomic_save_checkpoint that dies at `phase` of the saves of step 4."""
    real = callbacks.atomic_save_checkpoint

    def save(trainer, filepath, weights_only=False):
        name = os.path.basename(filepath)
        if trainer.global_step == 4 and phase == "before_temp" and name == "step=4.ckpt":
            raise Killed(phase)
        if trainer.global_step == 4 and phase == "temp_not_renamed" and name == "step=4.ckpt":
            def no_rename(src, dst):
                assert os.path.getsize(src) > 0  # the temporary is complete
                raise Killed(phase)
            os.replace = no_rename
        if trainer.global_step == 4 and phase == "between_step_and_last" and name == "last.ckpt":
            raise Killed(phase)
        real(trainer, filepath, weights_only)

    return save


@pytest.mark.parametrize("phase, resumed_from, step", [
    ("before_temp", "last.ckpt", 2),
    ("temp_not_renamed", "last.ckpt", 2),
    ("between_step_and_last", "step=4.ckpt", 4),
    ("truncated_last", "step=4.ckpt", 4),
    ("truncated_step", "last.ckpt", 2),
])
def test_resume_from_the_newest_intact_checkpoint_whenever_the_kill_hit(synth_dir, tmp_path, monkeypatch, caplog,
                                                                        phase, resumed_from, step):
    recipe = tiny_recipe(str(synth_dir / "train"), None, tmp_path, steps=6)
    recipe["trainer"]["callbacks"][0]["init_args"] = {"every_n_train_steps": 2, "keep_last": -1}
    path = write_recipe(recipe, tmp_path / "r.yaml")
    ckpts = tmp_path / "checkpoints"
    with monkeypatch.context() as m:
        if phase == "truncated_last":
            run_fit(["--config", str(path), "--trainer.max_steps", "4"])
        else:
            m.setattr(os, "replace", os.replace)  # restored after the "kill"
            m.setattr(callbacks, "atomic_save_checkpoint",
                      _kill_at("between_step_and_last" if phase == "truncated_step" else phase))
            with pytest.raises(Killed):
                run_fit(["--config", str(path)])
    torn = {"truncated_last": ckpts / "last.ckpt", "truncated_step": ckpts / "step=4.ckpt"}.get(phase)
    if torn is not None:
        data = torn.read_bytes()
        torn.write_bytes(data[: len(data) // 2])
    if phase == "temp_not_renamed":
        assert len(list(ckpts.glob("step=4.ckpt.tmp.*"))) == 1

    assert load_checkpoint(ckpts / resumed_from)["global_step"] == step

    with caplog.at_level(logging.WARNING, logger="radio.train.callbacks"):
        cli = run_fit(["--config", str(path), "--ckpt_path", "last"])
    assert cli.trainer.ckpt_path == str(ckpts / resumed_from)
    assert min(logged(only_version(tmp_path), "train/loss")) == step  # the resumed run's first step
    skipped = [r.getMessage() for r in caplog.records if "skipping the checkpoint" in r.getMessage()]
    assert skipped == ([] if torn is None else [skipped[0]]) and (torn is None or str(torn) in skipped[0])
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 6
    assert not list(ckpts.glob("*.tmp*")) and not list(ckpts.glob("last-v*"))


def test_the_resumed_run_is_the_one_that_wrote_last(tmp_path):
    """Checkpoints of an older run left in the directory are not resumed, even with more steps."""
    def write(name, step, run, mtime):
        torch.save({"global_step": step, "radio_run": {"id": run}}, tmp_path / name)
        os.utime(tmp_path / name, (mtime, mtime))

    write("step=900.ckpt", 900, "old", 1000)
    write("last.ckpt", 900, "old", 1001)
    write("step=20.ckpt", 20, "new", 2000)
    write("last-v1.ckpt", 20, "new", 2001)
    write("step=10.ckpt", 10, "new", 1500)
    assert callbacks.resume_checkpoint(str(tmp_path)) == str(tmp_path / "last-v1.ckpt")
    (tmp_path / "last-v1.ckpt").write_bytes(b"PK\x03\x04 torn")
    assert callbacks.resume_checkpoint(str(tmp_path)) == str(tmp_path / "step=20.ckpt")
    os.utime(tmp_path / "last.ckpt", (3000, 3000))  # the old run went on
    assert callbacks.resume_checkpoint(str(tmp_path)) == str(tmp_path / "last.ckpt")
    (tmp_path / "bogus.ckpt").write_bytes(b"")
    (tmp_path / "step=30.ckpt.tmp.12.ab").write_bytes(b"")
    assert callbacks.resume_checkpoint(str(tmp_path)) == str(tmp_path / "last.ckpt")
