"""Data-parallel training through Lightning's own DDP strategy (2 gloo processes on the CPU) against one process
with the same global batch: same batches, same losses, same weights; every sample once per epoch; a DDP
checkpoint taken while the normalizers were still estimating resumes on one process to the same end."""
import json

import pytest
import yaml

from tests.helpers import tiny_recipe, write_recipe
from tests.train.runs import (
    load_checkpoint,
    logged,
    max_abs_difference,
    only_version,
    probe_callback,
    probe_keys,
    run_fit_subprocess,
)

STEPS, GLOBAL_BATCH, EVERY, ESTIMATE, SAMPLES = 12, 16, 4, 6, 160


def _recipe(synth_dir, root, devices, steps=STEPS):
    r = tiny_recipe(str(synth_dir / "train"), None, root, steps=steps, batch_size=GLOBAL_BATCH // devices,
                    num_workers=1)
    r["trainer"].update(devices=devices, strategy="ddp" if devices > 1 else "auto")
    r["trainer"]["callbacks"] = [{"class_path": "radio.train.callbacks.RadioCheckpoint",
                                  "init_args": {"every_n_train_steps": EVERY, "keep_last": -1}},
                                 probe_callback(root / "probe", fixed_positions=True)]
    for t in r["model"]["teachers"]:
        t["normalizer"] = "phis"
    r["model"]["normalization"] = {"estimate_steps": ESTIMATE}
    r["model"]["loss"] = {"feature": "mse"}
    return write_recipe(r, root / "recipe.yaml")


@pytest.mark.slow
def test_two_ddp_processes_match_one_process(synth_dir, tmp_path):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    for d in (one, two, resumed):
        d.mkdir()
    run_fit_subprocess(_recipe(synth_dir, one, 1))
    run_fit_subprocess(_recipe(synth_dir, two, 2))

    # the same global batch at every step: rank 0's half then rank 1's
    k1, k2 = probe_keys(one / "probe", 0), [probe_keys(two / "probe", r) for r in (0, 1)]
    assert sorted(k1) == sorted(k2[0]) == sorted(k2[1]) == list(range(STEPS))
    for s in range(STEPS):
        assert k1[s][0] == k2[0][s][0] + k2[1][s][0] and len(k2[0][s][0]) == GLOBAL_BATCH // 2
    # the first epoch (160 samples = 10 steps) holds every sample exactly once, over both ranks
    epoch = [k for s in range(SAMPLES // GLOBAL_BATCH) for r in (0, 1) for k in k2[r][s][0]]
    assert len(epoch) == len(set(epoch)) == SAMPLES

    loss1, loss2 = logged(only_version(one), "train/loss"), logged(only_version(two), "train/loss")
    assert sorted(loss1) == sorted(loss2) == list(range(STEPS))
    assert max(abs(loss1[s] - loss2[s]) / loss1[s] for s in loss1) < 1e-4, (loss1, loss2)
    assert loss1[STEPS - 1] < 0.7 * loss1[0]  # it trains
    a, b = load_checkpoint(one / "checkpoints" / "last.ckpt"), load_checkpoint(two / "checkpoints" / "last.ckpt")
    assert max_abs_difference(a["state_dict"], b["state_dict"]) < 1e-4
    for name in ("clip", "dino_v2"):  # statistics over both ranks = over the whole batch
        assert a["state_dict"][f"model.normalizers.{name}.count"] == b["state_dict"][f"model.normalizers.{name}.count"]

    # resume the 2-rank checkpoint of step 4 (normalizers still estimating) on one process
    mid = two / "checkpoints" / f"step={EVERY}.ckpt"
    state = load_checkpoint(mid)["state_dict"]
    one_mid = load_checkpoint(one / "checkpoints" / f"step={EVERY}.ckpt")["state_dict"]
    for name in ("clip", "dino_v2"):
        assert not bool(state[f"model.normalizers.{name}.frozen"])
        assert state[f"model.normalizers.{name}.count"] == one_mid[f"model.normalizers.{name}.count"]  # merged
    run_fit_subprocess(_recipe(synth_dir, resumed, 1), "--ckpt_path", str(mid))
    c = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert c["global_step"] == STEPS
    assert max_abs_difference(a["state_dict"], c["state_dict"]) < 1e-4
    assert json.loads((only_version(resumed) / "health.json").read_text())["samples_read"] == STEPS * GLOBAL_BATCH
    assert yaml.safe_load((only_version(two) / "config.yaml").read_text())["trainer"]["strategy"] == "ddp"
