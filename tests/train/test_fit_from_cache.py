"""`radio cache` once, then `radio fit` from the cache: no cached teacher runs in training and the loss falls."""
import contextlib
import io
import json

import pytest

import teachers
from eval.report import read_metrics_csv
from radio.cli.fit import run_fit
from radio.cli.main import main
from tests.helpers import tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def cached_fit(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fit_cache")
    cache = root / "cache"
    recipe = tiny_recipe(str(synth_dir / "train"), None, root, steps=40)
    recipe["data"]["cache"] = {"dir": str(cache)}
    # `radio cache --shards` with a recipe whose own data.shards do not exist here; --out from data.cache.dir
    elsewhere = {**recipe, "data": {**recipe["data"], "shards": str(root / "elsewhere" / "{000000..000001}.tar")}}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["cache", "--config", str(write_recipe(elsewhere, root / "cache.yaml")), "--shards",
                   str(synth_dir / "train")])
    printed = buf.getvalue()
    assert rc == 0, printed
    calls = []
    real = teachers.Teacher.forward

    def counting(self, x):
        calls.append(self.name)
        return real(self, x)

    teachers.Teacher.forward = counting
    try:
        cli = run_fit(["--config", str(write_recipe(recipe, root / "recipe.yaml"))])
    finally:
        teachers.Teacher.forward = real
    return cli, cache, printed, calls


def test_cache_command_prints_the_storage_per_image_per_teacher(cached_fit):
    _, cache, printed, _ = cached_fit
    for name in ("clip", "dino_v2"):
        meta = json.loads((cache / name / "meta.json").read_text())
        assert meta["count"] == 160
        assert f"{name}: 160 images at {meta['resolution'][0]}x{meta['resolution'][1]}, " \
               f"{meta['bytes_per_image'] / 1024:.1f} KiB per image (float16)" in printed


def test_a_fit_from_the_cache_runs_no_cached_teacher_and_its_loss_falls(cached_fit):
    cli, _, _, calls = cached_fit
    assert cli.trainer.global_step == 40
    assert calls == []  # no validation here: every target came from the cache
    series = read_metrics_csv(cli.trainer.logger.log_dir + "/metrics.csv")
    loss = [v for _, v in series["train/loss"]]
    first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    for name in ("clip", "dino_v2"):
        assert f"train/{name}/feature" in series and f"train/{name}/summary" in series


def test_cache_command_takes_a_subset_of_teachers(synth_dir, tmp_path, capsys):
    recipe = write_recipe(tiny_recipe(str(synth_dir / "val"), None, tmp_path), tmp_path / "r.yaml")
    assert main(["cache", "--config", str(recipe), "--out", str(tmp_path / "c"), "--teachers", "dino_v2"]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["dino_v2"]
    assert main(["cache", "--config", str(recipe), "--out", str(tmp_path / "c"), "--teachers", "sam"]) == 2
    assert "cache --teachers: ['sam'] not teachers of" in capsys.readouterr().err
    assert main(["cache", "--config", str(recipe)]) == 2
    assert "give --out DIR (or data.cache.dir in the recipe)" in capsys.readouterr().err
