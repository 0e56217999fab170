"""Recipe validation of partitions, normalizers and fidelity resolutions, and the bundled real-scale recipes."""
import copy

import pytest
import yaml

import recipes
import teachers
from radio.cli.fit import run_fit
from radio.train.recipe_checks import ConfigError, check_recipe
from tests.helpers import tiny_recipe, write_recipe


def _expect(recipe, tmp_path, monkeypatch, *patterns):
    def boom(*a, **k):
        raise AssertionError("a teacher was built before the recipe was validated")

    monkeypatch.setattr(teachers, "build", boom)
    with pytest.raises(ConfigError) as e:
        run_fit(["--config", str(write_recipe(recipe, tmp_path / "bad.yaml"))])
    for p in patterns:
        assert p in str(e.value), (p, str(e.value))


def _staged(synth_dir, tmp_path, stages):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path)
    del r["data"]["resolution"], r["data"]["batch_size"]
    r["data"]["stages"] = stages
    return r


def test_partition_errors_fail_before_compute(synth_dir, tmp_path, monkeypatch):
    r = _staged(synth_dir, tmp_path, [
        {"steps": 5, "partitions": [{"resolution": 40, "batch_size": 4}]},
        {"partitions": [{"resolution": 64, "batch_size": 4, "teachers": ["dino_v2", "sam2"]},
                        {"resolution": 512, "batch_size": 2}]}])
    _expect(r, tmp_path, monkeypatch,
            "data.stages[0].partitions[0].resolution: 40 is not a multiple of the student's patch size 16 "
            "(nearest valid: 32 or 48)",
            "data.stages[1].partitions[0].teachers: 'sam2' is not a teacher of this recipe (clip, dino_v2)",
            "data.stages[1].partitions[1].resolution: 512 exceeds model.student.max_resolution 256")


def test_mistyped_partition_fields_are_named_not_a_traceback(synth_dir, tmp_path):
    """Plain-YAML checks (`radio cache`, check_recipe) see values LightningCLI has not typed yet."""
    r = _staged(synth_dir, tmp_path, [
        {"steps": 2.5, "partitions": [{"resolution": "64", "batch_size": 4, "teachers": "dino_v2"}]},
        {"partitions": [{"resolution": 64, "batch_size": "8"}]}])
    with pytest.raises(ConfigError) as e:
        check_recipe(r)
    lines = str(e.value).splitlines()[1:]
    for p in ("data.stages[0].steps: must be an integer or null, got 2.5",
              "data.stages[0].partitions[0].resolution: must be an integer, got '64'",
              "data.stages[0].partitions[0].teachers: must be a list of strings or null, got 'dino_v2'",
              "data.stages[1].partitions[0].batch_size: must be an integer, got '8'"):
        assert p in str(e.value), (p, str(e.value))
    assert len(lines) == 4, lines  # one error per mistyped field: the range checks skip what the types named


def test_stage_without_steps_before_the_last_fails(synth_dir, tmp_path, monkeypatch):
    r = _staged(synth_dir, tmp_path, [{"partitions": [{"resolution": 32, "batch_size": 4}]},
                                      {"partitions": [{"resolution": 64, "batch_size": 4}]}])
    _expect(r, tmp_path, monkeypatch, "data.stages[0].steps: every stage but the last needs an integer steps >= 1")


def test_mixing_single_resolution_and_stages_fails(synth_dir, tmp_path, monkeypatch):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path)
    r["data"]["stages"] = [{"partitions": [{"resolution": 32, "batch_size": 4}]}]
    _expect(r, tmp_path, monkeypatch, "data.stages: give either data.resolution/data.batch_size")


def test_unknown_normalizer_and_bad_fidelity_resolution_fail(synth_dir, tmp_path, monkeypatch):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path)
    r["model"]["teachers"][0]["normalizer"] = "zca"
    r["model"]["validation"] = {"resolutions": [64, 72]}
    r["model"]["normalization"] = {"estimate_steps": 0}
    _expect(r, tmp_path, monkeypatch,
            "model.teachers[0].normalizer: unknown normalizer 'zca'; valid: channel_std, global_std, none, "
            "pca_whiten, phis",
            "model.validation.resolutions[1]: 72 is not a multiple of the student's patch size 16",
            "model.normalization.estimate_steps: must be an integer >= 1, got 0")


@pytest.mark.parametrize("name", ["radio-v2.5-b", "radio-v2.5-l"])
def test_real_recipes_are_valid_multi_stage_phis_recipes(name, synth_dir):
    r = yaml.safe_load(recipes.path(name).read_text())
    assert r["trainer"]["accelerator"] == "gpu" and r["trainer"]["precision"] == "bf16-mixed"
    assert {t["name"] for t in r["model"]["teachers"]} == {"clip", "siglip", "dino_v2", "sam"}
    assert all(t["normalizer"] == "phis" for t in r["model"]["teachers"]) and r["model"]["loss"]["feature"] == "mse"
    assert [[p["resolution"] for p in s["partitions"]] for s in r["data"]["stages"]] == [[256], [432], [432, 1024]]
    local = copy.deepcopy(r)
    local["data"].update(shards=str(synth_dir / "train"), val_shards=str(synth_dir / "val"))
    if "sam" in teachers.available():
        check_recipe(local)
    else:  # the SAM adapter is not installed in this checkout: that must be the only complaint
        with pytest.raises(ConfigError) as e:
            check_recipe(local)
        assert str(e.value).count("\n") == 1 and "model.teachers[3].name: unknown teacher 'sam'" in str(e.value)


def test_real_recipe_prints_its_resolved_config(capsys):
    with pytest.raises(SystemExit) as e:
        run_fit(["--config", str(recipes.path("radio-v2.5-b")), "--print_config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in ("stages:", "resolution: 1024", "- dino_v2", "mosaic: true", "normalizer: phis", "estimate_steps: 3000"):
        assert key in out, key


def test_multinode_overlay_resolves_on_top_of_the_base_recipe(capsys):
    with pytest.raises(SystemExit) as e:
        run_fit(["--config", str(recipes.path("radio-v2.5-b")), "--config",
                 str(recipes.path("radio-v2.5-b-multinode")), "--print_config"])
    assert e.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    overlay = yaml.safe_load(recipes.path("radio-v2.5-b-multinode").read_text())
    assert cfg["trainer"]["num_nodes"] == overlay["trainer"]["num_nodes"] > 1
    assert cfg["trainer"]["strategy"] == "ddp" and cfg["trainer"]["devices"] == overlay["trainer"]["devices"]
    assert [t["name"] for t in cfg["model"]["teachers"]] == ["clip", "siglip", "dino_v2", "sam"]  # base kept


def test_unknown_keys_in_a_plain_recipe_are_named(synth_dir, tmp_path):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path)
    r["trainr"] = {}
    r["model"]["teachers"][1]["colour"] = "red"
    r["data"]["shuffle_buffer"] = 100  # no longer a data option (the epoch order shuffles globally)
    r["data"]["resolution"], r["data"]["stages"] = None, [{"partitions": [{"resolution": 32, "bs": 4}]}]
    del r["data"]["batch_size"]
    with pytest.raises(ConfigError) as e:
        check_recipe(r)
    msg = str(e.value)
    for p in ("recipe: unknown key(s) ['trainr']", "model.teachers[1]: unknown key(s) ['colour']",
              "data: unknown key(s) ['shuffle_buffer']", "data.stages[0].partitions[0]: unknown key(s) ['bs']"):
        assert p in msg, (p, msg)


def test_fsdp_on_the_cpu_and_bad_fraction_fail_before_compute(synth_dir, tmp_path, monkeypatch):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path, max_bad_fraction=1.5)
    r["trainer"].update(strategy="fsdp", devices=2)
    _expect(r, tmp_path, monkeypatch, "trainer.strategy: fsdp (FSDP) needs GPUs",
            "data.max_bad_fraction: must be a finite number in [0, 1], got 1.5")
    r["trainer"].update(strategy={"class_path": "lightning.pytorch.strategies.FSDPStrategy"}, devices=2)
    _expect(r, tmp_path, monkeypatch, "(FSDP) needs GPUs")
    r["trainer"]["strategy"] = "dpp"
    _expect(r, tmp_path, monkeypatch, "trainer.strategy: unknown strategy 'dpp'")
    r["trainer"].update(strategy="auto", devices=1, accumulate_grad_batches=4)
    _expect(r, tmp_path, monkeypatch, "trainer.accumulate_grad_batches: must be 1, got 4")


def test_an_empty_shard_set_fails_before_compute(tmp_path, monkeypatch):
    import tarfile

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "000000.tar").write_bytes(b"")
    tarfile.open(shards / "000001.tar", "w").close()  # a valid tar without members
    r = tiny_recipe(str(shards), None, tmp_path)
    _expect(r, tmp_path, monkeypatch, "data.shards: the shard set is empty: none of its 2 shard(s) holds a sample",
            "000000.tar (empty file)", "000001.tar (a tar without members)")


def test_a_teacher_that_cannot_reach_a_grid_is_named(synth_dir):
    from radio.data.datamodule import ShardDataModule
    from radio.train.module import DistillModule
    from radio.train.recipe_checks import teacher_grid_errors
    from tests.helpers import TINY_CLIP, TINY_DINO, TINY_STUDENT

    module = DistillModule(TINY_STUDENT, [copy.deepcopy(TINY_CLIP), copy.deepcopy(TINY_DINO)],
                           validation={"resolutions": [32, 64]})
    dm = ShardDataModule(str(synth_dir / "train"), resolution=64, batch_size=4)
    assert teacher_grid_errors(module, dm) == []
    module.teachers["clip"].input_size = 12  # a fixed canvas smaller than the teacher's 16 px patch: no cell
    errors = teacher_grid_errors(module, dm)
    assert len(errors) == 2 and all(e.startswith("model.teachers[0] (clip): cannot produce targets") for e in errors)
    assert "4x4 student grid at 64 px" in errors[1] and "its feature grid at 12x12 px is 0x0" in errors[1]


@pytest.mark.parametrize("student", [{"patch_size": 0}, {"patch_size": "16"}, {"max_resolution": 8}])
def test_a_cache_with_a_bad_patch_size_is_one_more_error_not_a_crash(student, synth_dir, tmp_path):
    """Without a valid patch size there is no student grid to check the cache against: that is reported."""
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path)
    r["model"]["student"].update(student)
    r["data"]["cache"] = {"dir": str(tmp_path / "cache")}
    with pytest.raises(ConfigError) as e:
        check_recipe(r)
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 2 and lines[0].strip().startswith("model.student."), lines
    assert lines[1].strip().startswith("data.cache: not checked: the student grid it is written for needs a "
                                       "valid model.student.patch_size"), lines


def test_every_dataclass_section_of_a_plain_recipe_goes_through_the_schema(synth_dir, tmp_path):
    r = tiny_recipe(str(synth_dir / "train"), None, tmp_path)
    r["model"]["optimizer"].update(betas=[0.9], warmup="3")
    r["model"]["loss"] = {"feature": 3}
    r["model"]["validation"] = {"resolutions": 64}
    r["model"]["teachers"][0]["seed"] = True
    with pytest.raises(ConfigError) as e:
        check_recipe(r)
    lines = [line.strip() for line in str(e.value).splitlines()[1:]]
    assert lines == ["model.teachers[0].seed: must be an integer, got True",
                     "model.optimizer: unknown key(s) ['warmup']; allowed: ['betas', 'lr', 'min_lr_ratio', "
                     "'warmup_steps', 'weight_decay']",
                     "model.optimizer.betas: must be a list of 2 numbers, got [0.9]",
                     "model.loss.feature: must be a string, got 3",
                     "model.validation.resolutions: must be a list of integers or null, got 64"]
