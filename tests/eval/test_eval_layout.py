"""Every eval module keeps off the training loop (DESIGN.md section 1), checked in a fresh interpreter."""
import subprocess
import sys

MODULES = ["datasets", "features", "fidelity", "heads", "knn", "linear", "plots", "probes", "report", "run", "seg",
           "vlm", "vlm_data", "zeroshot"]


def test_no_eval_module_imports_the_training_loop():
    code = f"import {', '.join(f'eval.{m}' for m in MODULES)}\nimport sys\nprint('\\n'.join(sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    mods = set(r.stdout.split())
    assert not {m for m in mods if m.startswith("radio.train")} and "lightning" not in mods
    import pathlib

    import eval as pkg

    on_disk = {p.stem for p in pathlib.Path(pkg.__file__).parent.glob("*.py")} - {"__init__"}
    assert on_disk == set(MODULES)  # a new module must be added here, so it is checked too
