import copy

import pytest
import torch

import teachers
from eval.report import read_metrics_csv
from radio.cli.fit import run_fit
from radio.export import export_checkpoint, load, read_checkpoint
from radio.model.radio_model import FORMAT_VERSION
from radio.train.recipe_checks import ConfigError
from tests.helpers import TINY_CLIP, TINY_DINO, fit_tiny, tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def fitted(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    _, cli = fit_tiny(synth_dir, root, steps=40)
    return cli, root


def test_training_loss_falls(fitted):
    cli, _ = fitted
    series = read_metrics_csv(cli.trainer.logger.log_dir + "/metrics.csv")
    loss = [v for _, v in series["train/loss"]]
    assert len(loss) >= 30
    first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert cli.trainer.global_step == 40
    for name in ("clip", "dino_v2"):
        assert f"val/{name}/feature" in series and f"val/{name}/fidelity" in series


def test_teachers_receive_no_gradient_and_do_not_change(fitted):
    cli, _ = fitted
    module = cli.model
    opt_params = {id(p) for g in cli.trainer.optimizers[0].param_groups for p in g["params"]}
    for spec, (name, t) in zip((TINY_CLIP, TINY_DINO), module.teachers.items()):
        fresh = teachers.build(copy.deepcopy(spec))
        for (k, p), (_, q) in zip(t.named_parameters(), fresh.named_parameters()):
            assert torch.equal(p, q), f"{name}.{k} changed"
            assert p.grad is None and not p.requires_grad and id(p) not in opt_params
    assert "_teachers" not in "".join(module.state_dict().keys())
    assert not any(k.startswith(("clip", "dino")) for k in module.state_dict())


def test_checkpoint_export_load_is_bit_identical(fitted, tmp_path):
    cli, _ = fitted
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    raw = read_checkpoint(ckpt)  # weights_only=True works on our checkpoints
    assert raw["radio_model_config"]["format_version"] == FORMAT_VERSION
    out = export_checkpoint(ckpt, tmp_path / "student")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    model = load(out)
    trained = cli.model.model.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a, b = trained(x), model(x)
        assert torch.equal(a.summary, b.summary) and torch.equal(a.features, b.features)
        ad_a, ad_b = trained(x, adaptors=["clip", "dino_v2"]), model(x, adaptors=["clip", "dino_v2"])
        for n in ("clip", "dino_v2"):
            assert torch.equal(ad_a[n].features, ad_b[n].features)
            assert torch.equal(ad_a[n].summary, ad_b[n].summary)


def _expect_config_error(recipe, tmp_path, match, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a teacher was built before the recipe was validated")

    monkeypatch.setattr(teachers, "build", boom)
    path = write_recipe(recipe, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=match):
        run_fit(["--config", str(path)])


def test_unknown_teacher_fails_before_compute(synth_dir, tmp_path, monkeypatch):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path)
    r["model"]["teachers"][1]["name"] = "dino_v7"
    _expect_config_error(r, tmp_path, r"model.teachers\[1\].name: unknown teacher 'dino_v7'", monkeypatch)


def test_resolution_not_multiple_of_patch_fails_before_compute(synth_dir, tmp_path, monkeypatch):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path, resolution=70)
    _expect_config_error(r, tmp_path, r"data.resolution: 70 is not a multiple of the student's patch size 16",
                         monkeypatch)


def test_shard_pattern_matching_nothing_fails_before_compute(tmp_path, monkeypatch):
    r = tiny_recipe(str(tmp_path / "nowhere" / "{000000..000003}.tar"), None, tmp_path)
    _expect_config_error(r, tmp_path, r"data.shards: shard .*nowhere.*does not exist", monkeypatch)


def test_unknown_recipe_key_is_rejected(synth_dir, tmp_path, capsys):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path)
    r["model"]["student"]["embed_dims"] = 64
    path = write_recipe(r, tmp_path / "bad.yaml")
    with pytest.raises(SystemExit):
        run_fit(["--config", str(path)])
    assert "embed_dims" in capsys.readouterr().err
