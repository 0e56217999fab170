"""Every eval module keeps off the training loop (DESIGN.md section 1), checked in a fresh interpreter, and the
eval modules import each other without cycles."""
import ast
import graphlib
import pathlib
import subprocess
import sys

MODULES = ["datasets", "features", "fidelity", "heads", "knn", "linear", "options", "plots", "probes", "report",
           "run", "seg", "shard_split", "splits", "vlm", "vlm_data", "zeroshot"]


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


def _eval_imports(path: pathlib.Path) -> set[str]:
    """The eval modules `path` imports anywhere in its source (module level, functions, TYPE_CHECKING)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "eval":
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("eval."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("eval.")}
    return out


def test_eval_modules_form_no_import_cycle():
    import eval as pkg

    root = pathlib.Path(pkg.__file__).parent
    graph = {m: _eval_imports(root / f"{m}.py") & set(MODULES) for m in MODULES}
    assert graph["probes"] >= {"options", "datasets"} and "probes" in graph["run"]  # the graph is read
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order.index("options") < order.index("probes") < order.index("run")
