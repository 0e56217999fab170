"""Helpers for tests that run `radio fit` in subprocesses (kills, resumes, several ranks) and compare the runs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[2]


def fit_command(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "radio.cli.main", "fit", "--config", str(recipe), *extra]


def fit_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    return env


def run_fit_subprocess(recipe: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(fit_command(recipe, *extra), cwd=ROOT, env=fit_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over the entries of two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def logged(log_dir: Path, name: str) -> dict[int, float]:
    """{step: value} of one metric in a CSVLogger metrics.csv."""
    out: dict[int, float] = {}
    with open(log_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get(name):
                out[int(row["step"])] = float(row[name])
    return out


class Probe(Callback):
    """Test instrumentation: writes the sample keys of every step (`keys_rank{r}.json` in `out`), and with
    `fixed_positions` keeps the student's position embedding in eval mode (no random crops), so that runs with
    different numbers of ranks (which draw their crops per rank) compute the same function."""

    def __init__(self, out: str, fixed_positions: bool = False) -> None:
        self.out, self.fixed_positions = out, fixed_positions
        self.keys: dict[int, list[list[str]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.fixed_positions:
            pl_module.model.backbone.cpe.eval()
        self.keys[batch.step] = [list(p.key) for p in batch.partitions]

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).mkdir(parents=True, exist_ok=True)
        (Path(self.out) / f"keys_rank{trainer.global_rank}.json").write_text(json.dumps(self.keys))


def probe_keys(out: Path, rank: int) -> dict[int, list[list[str]]]:
    return {int(k): v for k, v in json.loads((out / f"keys_rank{rank}.json").read_text()).items()}


def probe_callback(out: Path, fixed_positions: bool = False) -> dict[str, Any]:
    return {"class_path": "tests.train.runs.Probe", "init_args": {"out": str(out), "fixed_positions": fixed_positions}}


def only_version(root: Path, version: int | None = None) -> Path:
    versions = sorted((root / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return versions[-1] if version is None else root / "logs" / f"version_{version}"
