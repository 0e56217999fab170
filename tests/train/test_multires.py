"""Multi-resolution partitions + mosaic + PHI-S through `radio fit`, and the normalizer round trip to exports."""
import json
from pathlib import Path

import pytest
import torch

from eval.report import read_metrics_csv
from radio.cli.fit import run_fit
from radio.data.batch import Partition, TrainBatch
from radio.export import export_checkpoint, load, read_checkpoint
from radio.train.module import DistillModule
from tests.helpers import TINY_CLIP, TINY_DINO, TINY_STUDENT, tiny_recipe, write_recipe

STAGES = [{"steps": 4, "partitions": [{"resolution": 32, "batch_size": 8}]},
          {"partitions": [{"resolution": 32, "batch_size": 8}, {"resolution": 64, "batch_size": 8, "weight": 2.0}]}]
ESTIMATE = 6


@pytest.fixture(scope="module")
def multires(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multires")
    recipe = tiny_recipe(str(synth_dir / "train"), str(synth_dir / "val"), root, steps=16)
    recipe["trainer"]["val_check_interval"] = 8
    del recipe["data"]["resolution"], recipe["data"]["batch_size"]
    recipe["data"].update(stages=STAGES, val_resolution=64, val_batch_size=16)
    recipe["model"]["teachers"][0].update(normalizer="phis", mosaic=True)
    recipe["model"]["teachers"][1].update(normalizer="phis")
    recipe["model"]["loss"] = {"feature": "mse"}
    recipe["model"]["normalization"] = {"estimate_steps": ESTIMATE}
    recipe["model"]["validation"] = {"resolutions": [32, 48, 64]}
    cli = run_fit(["--config", str(write_recipe(recipe, root / "recipe.yaml"))])
    return cli, root


def test_partitions_stages_and_mosaic_in_the_logs(multires):
    cli, _ = multires
    series = read_metrics_csv(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    assert cli.trainer.global_step == 16
    stages = [v for _, v in series["train/stage"]]
    assert stages[0] == 0 and stages[-1] == 1
    for name in ("clip", "dino_v2"):
        assert f"train/{name}/feature@32" in series and f"train/{name}/feature@64" in series
    # the mosaic partition (32 px: 2 x 2 tiles in clip's 64 px canvas) has no clip summary loss; 64 px has one
    assert "train/clip/summary@32" not in series and "train/clip/summary@64" in series
    assert "train/dino_v2/summary@32" in series
    for name in ("clip", "dino_v2"):
        for r in (32, 48, 64):
            assert f"val/{name}/fidelity@{r}" in series and f"val/{name}/cos_error@{r}" in series
        assert f"val/{name}/fidelity" in series and f"val/{name}/feature" in series


def test_normalizers_estimate_over_the_first_steps_then_freeze(multires):
    cli, _ = multires
    for name, norm in cli.model.model.normalizers.items():
        assert bool(norm.frozen) and not norm.needs_statistics
        # 4 steps x 8 images x 2x2 tokens, then 2 steps x (8 x 2x2 + 8 x 4x4 tokens): exactly the first 6 steps
        assert norm.count.item() == 4 * 32 + 2 * (32 + 128), name


def test_fidelity_history_is_written_and_rises(multires):
    cli, _ = multires
    log_dir = Path(cli.trainer.logger.log_dir)
    records = json.loads((log_dir / "fidelity.json").read_text())
    assert [r["step"] for r in records] == [8, 16]
    assert (log_dir / "fidelity.png").stat().st_size > 10_000
    for name in ("clip", "dino_v2"):
        assert set(records[-1]["teachers"][name]) == {"32", "48", "64"}
        first, last = records[0]["teachers"][name]["64"], records[-1]["teachers"][name]["64"]
        assert last["fidelity"] > first["fidelity"] > 0, (name, first, last)
    ckpt = read_checkpoint(cli.trainer.checkpoint_callback.last_model_path)
    saved = ckpt["radio_fidelity_history"]  # the step-16 checkpoint is written before the step-16 validation
    assert saved and saved == records[: len(saved)]


def test_normalizer_statistics_survive_checkpoint_export_load(multires, tmp_path):
    cli, _ = multires
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    out = export_checkpoint(ckpt, tmp_path / "student")
    config = json.loads((out / "config.json").read_text())
    assert {t["name"]: t["normalizer"] for t in config["teachers"]} == {"clip": "phis", "dino_v2": "phis"}
    model = load(out)
    trained = cli.model.model.eval()
    for name in ("clip", "dino_v2"):
        a, b = trained.normalizers[name], model.normalizers[name]
        for buf in ("count", "running_mean", "running_m2", "mu", "weight", "weight_inv", "phi", "rotation"):
            assert torch.equal(getattr(a, buf), getattr(b, buf)), (name, buf)
        assert bool(b.frozen) and b.ready
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        for name in ("clip", "dino_v2"):
            raw = model(x, adaptors=[name])[name].features
            normed = model.adapt(name, tokens, normalized=True).features
            assert torch.allclose(raw, model.normalizers[name].inverse(normed))
            assert torch.allclose(model.normalizers[name](raw), normed, atol=1e-4)
            assert torch.equal(raw, trained(x, adaptors=[name])[name].features)


def test_partition_weights_and_teacher_subsets_in_one_step(synth_dir):
    module = DistillModule(TINY_STUDENT, [TINY_CLIP, TINY_DINO]).eval()  # eval: deterministic CPE
    torch.manual_seed(0)
    a, b = torch.rand(4, 3, 32, 32), torch.rand(3, 3, 64, 64)
    batch = TrainBatch([Partition(a, None, 0.5, 32), Partition(b, ["dino_v2"], 2.0, 64)], stage=0)
    total = module.training_step(batch, 0)
    la, terms_a = module.partition_losses(a, module.objective.targets(batch.partitions[0]))
    lb, terms_b = module.partition_losses(b, module.objective.targets(batch.partitions[1]))
    assert set(terms_b) == {"dino_v2/feature", "dino_v2/summary"}
    assert set(terms_a) == {"clip/feature", "clip/summary", "dino_v2/feature", "dino_v2/summary"}
    assert torch.allclose(total, 0.5 * la + 2.0 * lb)


def test_validation_loss_is_the_training_loss_of_the_images_at_the_primary_resolution(monkeypatch):
    """Validation measures fidelity at every resolution and, at the primary one (the images' side without
    a datamodule), logs the loss of the training path (`partition_losses`) on the same images, no mosaic."""
    module = DistillModule(TINY_STUDENT, [dict(TINY_CLIP, mosaic=True), TINY_DINO],
                           validation={"resolutions": [64]}).eval()
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **_: logged.__setitem__(name, value))
    monkeypatch.setattr(module, "log_dict", lambda values, **_: logged.update(values))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # clip: a 2 x 2 mosaic fits
    with torch.no_grad():
        module.validation.start(module)
        module.validation.step(module, images)
        direct = module.objective.targets(Partition(images), mosaic=False)
        loss, terms = module.partition_losses(images, direct)
        _, mosaic_terms = module.partition_losses(images, module.objective.targets(Partition(images)))
    assert logged == {"val/loss": loss, **{f"val/{k}": v for k, v in terms.items()}}
    assert set(terms) == {"clip/feature", "clip/summary", "dino_v2/feature", "dino_v2/summary"}
    assert torch.equal(logged["val/loss"], loss)
    assert "clip/summary" not in mosaic_terms  # training runs clip through the mosaic here
    assert sorted(module.validation.metrics) == [("clip", 32), ("clip", 64), ("dino_v2", 32), ("dino_v2", 64)]


def test_summary_teacher_that_only_ever_sees_mosaics_is_rejected():
    from radio.data.schedule import Schedule

    module = DistillModule(TINY_STUDENT, [dict(TINY_CLIP, mosaic=True), TINY_DINO])
    with pytest.raises(ValueError, match=r"model.teachers\[0\] \(clip\): mosaic is on and every partition"):
        module.check_schedule(Schedule([{"partitions": [{"resolution": 32, "batch_size": 2}]}]))
    module.check_schedule(Schedule([{"partitions": [{"resolution": 32, "batch_size": 2},
                                                    {"resolution": 64, "batch_size": 2}]}]))
