"""One run per output directory (a lock held for the run's life; a killed run's lock is taken over) and output
directories checked writable before any compute."""
import errno
import functools
import json
import os
import socket
import subprocess
import sys

import pytest

import radio.train.lock as lock_mod
from radio.cli.main import main
from radio.train.lock import LOCK_NAME, RunLock, RunLockedError
from radio.train.module import DistillModule
from tests.helpers import tiny_recipe, write_recipe


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def built(monkeypatch):
    """The DistillModules built and the training steps run in this test."""
    seen = {"built": 0, "steps": 0}
    init, step = DistillModule.__init__, DistillModule.training_step

    @functools.wraps(init)  # the CLI reads the signature
    def counting_init(self, *a, **k):
        seen["built"] += 1
        init(self, *a, **k)

    def counting_step(self, *a, **k):
        seen["steps"] += 1
        return step(self, *a, **k)

    monkeypatch.setattr(DistillModule, "__init__", counting_init)
    monkeypatch.setattr(DistillModule, "training_step", counting_step)
    return seen


def test_a_second_run_on_the_same_directory_fails_at_once_naming_the_first(synth_dir, tmp_path, capsys, built):
    recipe = write_recipe(tiny_recipe(str(synth_dir / "train"), None, tmp_path, steps=2), tmp_path / "r.yaml")
    first = RunLock(str(tmp_path)).acquire()  # the other run (this process, another open file)
    started = json.loads((tmp_path / LOCK_NAME).read_text())["started"]
    assert main(["fit", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in use by another run" in err
    assert f"pid {os.getpid()} on host {socket.gethostname()}, started {started}" in err
    assert built == {"built": 0, "steps": 0}  # nothing built, nothing computed
    assert not (tmp_path / "logs").exists() and not (tmp_path / "checkpoints").exists()

    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    assert main(["fit", "--config", str(recipe)]) == 0
    assert built == {"built": 1, "steps": 2}
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end of the run


def test_the_lock_of_a_killed_run_is_taken_over_and_released_on_errors(synth_dir, tmp_path, caplog, built,
                                                                        monkeypatch):
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead,
                                                  "started": "2020-01-01T00:00:00+00:00"}))
    recipe = write_recipe(tiny_recipe(str(synth_dir / "train"), None, tmp_path, steps=3), tmp_path / "r.yaml")
    held = []

    def step_then_fail(self, batch, batch_idx):
        held.append(json.loads((tmp_path / LOCK_NAME).read_text()))
        raise RuntimeError("a crash in the middle of the run")

    monkeypatch.setattr(DistillModule, "training_step", step_then_fail)
    with pytest.raises(RuntimeError, match="a crash in the middle"):
        main(["fit", "--config", str(recipe)])
    assert held[0]["pid"] == os.getpid() and held[0]["host"] == socket.gethostname()  # taken over
    took = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert len(took) == 1 and f"pid {dead} on host {socket.gethostname()}" in took[0]
    assert not (tmp_path / LOCK_NAME).exists()  # released although the run failed


def test_run_lock_with_and_without_flock(tmp_path, monkeypatch):
    a = RunLock(str(tmp_path)).acquire()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on host"):
        RunLock(str(tmp_path)).acquire()
    a.release()
    b = RunLock(str(tmp_path)).acquire()
    assert b.held and b.taken_over is None
    b.release()

    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # e.g. a network file system without locks: O_EXCL and pids
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": "x"}))
    c = RunLock(str(tmp_path)).acquire()
    assert c.taken_over["started"] == "x" and json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(str(tmp_path)).acquire()  # held by a live process
    c.release()
    path.write_text(json.dumps({"host": "another-host", "pid": _dead_pid(), "started": "y"}))
    with pytest.raises(RunLockedError, match="on host another-host, started y"):
        RunLock(str(tmp_path)).acquire()  # a pid of another host cannot be checked: not taken over
    assert lock_mod.launching_process()


@pytest.mark.parametrize("where", ["default_root_dir", "checkpoints", "logs"])
def test_unwritable_output_directories_fail_before_any_step(synth_dir, tmp_path, capsys, built, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    root = blocker / "run" if where == "default_root_dir" else tmp_path / "run"
    recipe = tiny_recipe(str(synth_dir / "train"), None, root, steps=2)
    if where == "checkpoints":
        recipe["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(blocker / "ckpts")
    elif where == "logs":
        recipe["trainer"]["logger"]["init_args"]["save_dir"] = str(blocker / "logs")
    assert main(["fit", "--config", str(write_recipe(recipe, tmp_path / "r.yaml"))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err
    assert {"default_root_dir": "trainer.default_root_dir", "checkpoints": "the checkpoint directory",
            "logs": "the log directory"}[where] in err
    assert built["steps"] == 0
    assert not (tmp_path / "run" / LOCK_NAME).exists()
