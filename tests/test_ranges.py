"""Recipe values outside their ranges stop `radio fit` before anything is built: exit 2, one line per error naming
the field and the allowed range, no traceback, no run directory."""
import copy

import pytest

import teachers
from radio.cli.main import main
from radio.data.datamodule import DEFAULT_BATCH_SIZE, DEFAULT_RESOLUTION, ShardDataModule
from tests.helpers import tiny_recipe, write_recipe

# (recipe path, bad value, text the error line must hold: the field and its allowed range); these run through the
# real `radio fit` entry point
BAD_VALUES = [
    ("data.batch_size", 0, "data.batch_size: must be an integer >= 1, got 0"),
    ("data.val_batch_size", 0, "data.val_batch_size: must be an integer >= 1, got 0"),
    ("data.resolution", 0, "data.resolution: must be a positive number of pixels"),
    ("data.num_workers", -1, "data.num_workers: must be an integer >= 0, got -1"),
    ("data.min_crop_scale", 5, "data.min_crop_scale: must be a finite number in (0, 1], got 5"),
    ("data.max_image_pixels", 0, "data.max_image_pixels: must be an integer >= 1, got 0"),
    ("model.student.depth", 0, "model.student.depth: must be an integer >= 1, got 0"),
    ("model.student.patch_size", 0, "model.student.patch_size: must be an integer >= 1, got 0"),
    ("model.student.num_heads", 3, "model.student.num_heads: must divide model.student.embed_dim (64), got 3"),
    ("model.optimizer.lr", float("nan"), "model.optimizer.lr: must be a finite number > 0, got nan"),
    ("model.optimizer.weight_decay", -0.1, "model.optimizer.weight_decay: must be a finite number >= 0"),
    ("model.optimizer.warmup_steps", -5, "model.optimizer.warmup_steps: must be an integer >= 0, got -5"),
    ("trainer.max_steps", -5, "trainer.max_steps: must be an integer >= 1 or -1, got -5"),
    ("trainer.log_every_n_steps", 0, "trainer.log_every_n_steps: must be an integer >= 1, got 0"),
    ("trainer.callbacks.0.init_args.every_n_train_steps", 0,
     "trainer.callbacks[0].init_args.every_n_train_steps: must be an integer >= 1, got 0"),
    ("trainer.callbacks.0.init_args.keep_last", 0,
     "trainer.callbacks[0].init_args.keep_last: must be an integer >= 1 or -1, got 0"),
    ("data.stages", [{"partitions": [{"resolution": 64, "batch_size": 0}]}],
     "data.stages[0].partitions[0].batch_size: must be an integer >= 1, got 0"),
]
# more of them, checked on the plain recipe (as `radio cache` does; the same checks, without the parser's second)
MORE_BAD_VALUES = [
    ("data.resolution", 72, "data.resolution: 72 is not a multiple of the student's patch size 16"),
    ("data.val_resolution", 0, "data.val_resolution: must be a positive number of pixels"),
    ("data.min_crop_scale", 0, "data.min_crop_scale: must be a finite number in (0, 1], got 0"),
    ("data.seed", -1, "data.seed: must be an integer >= 0, got -1"),
    ("data.max_bad_fraction", 1.5, "data.max_bad_fraction: must be a finite number in [0, 1], got 1.5"),
    ("model.student.num_heads", 0, "model.student.num_heads: must be an integer >= 1, got 0"),
    ("model.student.embed_dim", 0, "model.student.embed_dim: must be an integer >= 1, got 0"),
    ("model.student.max_resolution", 8, "model.student.max_resolution: must be >= model.student.patch_size (16)"),
    ("model.student.drop_path", 1.0, "model.student.drop_path: must be a finite number in [0, 1), got 1.0"),
    ("model.student.std", [0.2, 0.0, 0.2], "model.student.std[1]: must be a finite number > 0, got 0.0"),
    ("model.optimizer.lr", 0, "model.optimizer.lr: must be a finite number > 0, got 0"),
    ("model.optimizer.lr", float("inf"), "model.optimizer.lr: must be a finite number > 0, got inf"),
    ("model.optimizer.betas", [0.9, 1.5], "model.optimizer.betas[1]: must be a finite number in [0, 1), got 1.5"),
    ("model.optimizer.min_lr_ratio", 2, "model.optimizer.min_lr_ratio: must be a finite number in [0, 1]"),
    ("model.normalization.estimate_steps", 0, "model.normalization.estimate_steps: must be an integer >= 1"),
    ("model.stability.max_nonfinite_steps", 0, "model.stability.max_nonfinite_steps: must be an integer >= 1"),
    ("model.loss.smooth_l1_beta", -1, "model.loss.smooth_l1_beta: must be a finite number >= 0, got -1"),
    ("model.adaptor.num_inner", -1, "model.adaptor.num_inner: must be an integer >= 0, got -1"),
    ("model.teachers.1.feature_weight", -1, "model.teachers[1].feature_weight: must be a finite number >= 0"),
    ("trainer.max_steps", 0, "trainer.max_steps: must be an integer >= 1 or -1, got 0"),
    ("trainer.val_check_interval", 0, "trainer.val_check_interval: must be an integer >= 1 (batches) or"),
    ("trainer.limit_val_batches", 1.5, "trainer.limit_val_batches: must be an integer >= 0 (batches) or"),
    ("data.stages", [{"steps": 2, "partitions": [{"resolution": 64, "batch_size": 4}]},
                     {"partitions": [{"resolution": 64, "batch_size": 4, "weight": -1.0}]}],
     "data.stages[1].partitions[0].weight: must be a finite number >= 0, got -1.0"),
]


def _set(recipe, path, value):
    keys = path.split(".")
    obj = recipe
    for k in keys[:-1]:
        obj = obj[int(k)] if k.isdigit() else obj.setdefault(k, {})
    obj[keys[-1]] = value
    if path == "data.stages":  # stages replace the single partition
        del recipe["data"]["resolution"], recipe["data"]["batch_size"]


def _fail_fast(recipe, tmp_path, monkeypatch, capsys):
    """Run `radio fit` on the recipe; return (exit code, stderr + stdout); nothing may be built or written."""
    def boom(*a, **k):
        raise AssertionError("a teacher was built before the recipe was validated")

    monkeypatch.setattr(teachers, "build", boom)
    rc = main(["fit", "--config", str(write_recipe(recipe, tmp_path / "bad.yaml"))])
    captured = capsys.readouterr()
    assert not (tmp_path / "run").exists()  # no checkpoints, no logs: no step was computed
    return rc, captured.err + captured.out


@pytest.mark.parametrize("path,value,expected", BAD_VALUES, ids=[f"{p}={v}" for p, v, _ in BAD_VALUES])
def test_a_value_out_of_range_exits_2_naming_the_field(path, value, expected, synth_dir, tmp_path, monkeypatch,
                                                       capsys):
    recipe = tiny_recipe(str(synth_dir / "train"), None, tmp_path / "run", steps=2)
    _set(recipe, path, copy.deepcopy(value))
    rc, out = _fail_fast(recipe, tmp_path, monkeypatch, capsys)
    assert rc == 2 and "Traceback" not in out, out
    lines = out.strip().splitlines()
    assert lines[0] == "radio: error: invalid recipe:" and len(lines) == 2, out  # this one error, on one line
    assert expected in lines[1], (expected, out)


@pytest.mark.parametrize("path,value,expected", MORE_BAD_VALUES, ids=[f"{p}={v}" for p, v, _ in MORE_BAD_VALUES])
def test_more_values_out_of_range_are_named(path, value, expected, synth_dir, tmp_path):
    from radio.train.recipe_checks import ConfigError, check_recipe

    recipe = tiny_recipe(str(synth_dir / "train"), None, tmp_path / "run", steps=2)
    _set(recipe, path, copy.deepcopy(value))
    with pytest.raises(ConfigError) as e:
        check_recipe(recipe)
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and expected in lines[1], (expected, str(e.value))


def test_every_error_of_a_recipe_is_reported_together(synth_dir, tmp_path, monkeypatch, capsys):
    recipe = tiny_recipe(str(synth_dir / "train"), None, tmp_path / "run", steps=2)
    for path, value in (("data.batch_size", 0), ("model.optimizer.lr", float("nan")), ("model.student.depth", 0),
                        ("trainer.max_steps", -5), ("data.min_crop_scale", 5), ("data.num_workers", -1)):
        _set(recipe, path, value)
    rc, out = _fail_fast(recipe, tmp_path, monkeypatch, capsys)
    assert rc == 2 and "Traceback" not in out
    lines = out.strip().splitlines()[1:]
    fields = ["data.batch_size", "model.optimizer.lr", "model.student.depth", "trainer.max_steps",
              "data.min_crop_scale", "data.num_workers"]
    assert len(lines) == len(fields)
    for f in fields:
        assert sum(line.strip().startswith(f + ":") for line in lines) == 1, (f, out)


def test_in_range_edge_values_pass_the_checks(synth_dir, tmp_path):
    """The bounds themselves, where allowed (min_crop_scale 1, warm-up 0, keep_last -1, max_steps -1)."""
    from radio.train.recipe_checks import check_recipe

    recipe = tiny_recipe(str(synth_dir / "train"), None, tmp_path / "run", steps=2)
    for path, value in (("data.min_crop_scale", 1.0), ("model.optimizer.warmup_steps", 0),
                        ("trainer.callbacks.0.init_args.keep_last", -1), ("trainer.max_steps", -1),
                        ("data.num_workers", 0), ("model.optimizer.weight_decay", 0.0)):
        _set(recipe, path, value)
    check_recipe(recipe)


@pytest.mark.parametrize("kwargs,field", [({"resolution": 0, "batch_size": 4}, "data.resolution"),
                                          ({"resolution": 32, "batch_size": 0}, "data.batch_size"),
                                          ({"val_batch_size": 0}, "data.val_batch_size"),
                                          ({"min_crop_scale": 5.0}, "data.min_crop_scale")])
def test_the_datamodule_refuses_zero_instead_of_a_default(kwargs, field, synth_dir):
    """No silent fallback: 0 is an error, only None (not given) takes the default."""
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ShardDataModule(str(synth_dir / "train"), **kwargs)
    dm = ShardDataModule(str(synth_dir / "train"))
    assert (dm.resolution, dm.batch_size, dm.val_batch_size) == (DEFAULT_RESOLUTION,) + (DEFAULT_BATCH_SIZE,) * 2
