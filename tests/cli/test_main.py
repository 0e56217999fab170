import subprocess
import sys

import pytest

from radio.cli.main import build_parser, main

SUBCOMMANDS = [["demo"], ["validate"], ["data"], ["data", "synth"], ["data", "pack"], ["cache"], ["export"], ["eval"],
               ["eval", "knn"]]


@pytest.mark.parametrize("cmd", [[]] + SUBCOMMANDS, ids=lambda c: " ".join(c) or "radio")
def test_help_works_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: radio" in out


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    for name in ("demo", "data", "fit", "validate", "cache", "export", "eval"):
        assert name in text


@pytest.mark.slow
def test_fit_help_and_print_config_via_console_script(tmp_path):
    exe = [sys.executable, "-m", "radio.cli.main"]
    r = subprocess.run([*exe, "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--config" in r.stdout and "--trainer.max_steps" in r.stdout
    r = subprocess.run([*exe, "fit", "--config", "recipes/demo.yaml", "--print_config"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for key in ("trainer:", "model:", "student:", "teachers:", "- name: clip", "- name: dino_v2", "data:",
                "resolution: 128", "smooth_l1_beta: 2.0"):
        assert key in r.stdout, key


def test_missing_shards_give_a_clear_cli_error(tmp_path, capsys):
    code = main(["eval", "knn", "--model", "clip", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "expected sub-directories 'train' and 'val'" in capsys.readouterr().err


def test_synth_and_pack_commands(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--count", "8", "--val-count", "4",
                 "--size", "32"]) == 0
    assert (tmp_path / "s" / "train" / "000000.tar").is_file() and (tmp_path / "s" / "val" / "000000.tar").is_file()
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "imgs" / "a" / "x.png")
    assert main(["data", "pack", str(tmp_path / "imgs"), "--out", str(tmp_path / "p")]) == 0
    assert "packed 1 images (1 classes)" in capsys.readouterr().out
