"""The dependency direction of DESIGN.md section 1, checked in fresh interpreters and on the import graph, and no
import cycles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


@pytest.mark.parametrize("code", [
    "import teachers, radio.cache.writer; teachers.available()",
    "import radio.model, radio.normalize, radio.losses, radio.export, radio.export.onnx, radio.export.timm, "
    "radio.export.hf, radio.export.card, radio.fidelity",
])
def test_teachers_and_model_pieces_never_import_the_training_loop(code):
    mods = _modules_after(code)
    assert "radio.train.module" not in mods and "lightning" not in mods and "eval" not in mods


def test_teachers_import_neither_the_data_pipeline_nor_the_feature_cache():
    """The feature cache (radio.cache) uses the teachers, never the other way round."""
    mods = _modules_after("import teachers; teachers.available()")
    assert not [m for m in mods if m.split(".")[:2] in (["radio", "data"], ["radio", "cache"])]


def test_eval_imports_no_training_loop():
    mods = _modules_after("import eval.features, eval.knn, eval.report, eval.run")
    assert "radio.train.module" not in mods and "lightning" not in mods


def test_radio_load_needs_no_teacher_library():
    mods = _modules_after("import radio; radio.load")
    assert not {"open_clip", "segment_anything", "transformers", "lightning"} & mods


# ---- no import cycles -------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("radio", "teachers", "eval")
# Import cycles allowed, each as the modules of one strongly connected component of the import graph: none.
KNOWN_CYCLES: list[frozenset[str]] = []


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs: at module level and in functions; not those under `if TYPE_CHECKING:`."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = node.orelse if _is_type_checking(node) else ast.iter_child_nodes(node)
        todo.extend(children)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of radio/, teachers/, eval/ whose import it runs: the module named, and the
    `__init__` of each package above it that is not also above the importer (already running when a module
    imports a sibling): from radio.cache.writer, `from radio.data.shards import X` runs radio.data.shards and
    radio.data (radio is already running); from radio.export.write, `from radio.export.format import X` runs radio.export.format only."""
    mods = _modules()

    def own(name: str) -> str | None:  # the longest prefix of `name` that is one of our modules
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [own(a.name) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else own(base) for a in node.names]
            for target in filter(None, targets):
                parts = target.split(".")
                graph[mod] |= {a for a in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                               if a in mods and a != mod and not mod.startswith(a + ".")}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.add(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_strongly_connected_finds_cycles_and_only_them():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert sorted(map(sorted, strongly_connected(graph))) == [["a", "b", "c"], ["d", "e"]]


def test_import_graph_resolves_submodules_relative_and_function_level_imports():
    graph = import_graph()
    assert {"radio.export.format", "radio.export.state", "radio.export.card"} <= graph["radio.export.write"]
    assert "radio.export.hf" in graph["radio.export.write"]  # a function-level import
    assert "radio.export" not in graph["radio.export.hf"]  # a sibling: its package's __init__ is running
    assert {"radio.data.shards", "radio.data"} <= graph["radio.cache.writer"]  # the package above runs too
    assert "eval.run" not in graph["eval.probes"]  # only under `if TYPE_CHECKING:`


def test_no_import_cycles_between_modules():
    cycles = [c for c in strongly_connected(import_graph()) if c not in KNOWN_CYCLES]
    assert not cycles, "import cycles between modules: " + "; ".join(
        " <-> ".join(sorted(c)) for c in cycles)


# ---- the direction between packages, on the same graph ----------------------------------------------------
# every radio module outside the training loop, the data pipeline, the feature cache and the CLI: the model,
# normalizers, losses, ToMe, export, fidelity, ...
NOT_MODEL_PIECES = ("radio.train", "radio.data", "radio.cache", "radio.cli")


def _within(mod: str, packages: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in packages)


def forbidden_imports(graph: dict[str, set[str]], importers: list[str],
                      forbidden: tuple[str, ...]) -> list[str]:
    """For each importer that reaches a module of `forbidden` (directly or through other modules), the
    shortest chain of imports that does, as "a -> b -> c"."""
    found = []
    for start in importers:
        parent: dict[str, str] = {}
        todo, seen = [start], {start}
        while todo:  # breadth first: the shortest chain
            node = todo.pop(0)
            if node != start and _within(node, forbidden):
                chain = [node]
                while chain[-1] != start:
                    chain.append(parent[chain[-1]])
                found.append(" -> ".join(reversed(chain)))
                break
            for child in sorted(graph[node] - seen):
                seen.add(child)
                parent[child] = node
                todo.append(child)
    return found


def test_forbidden_imports_follows_chains_and_names_them():
    graph = {"t.a": {"t.b", "m.x"}, "t.b": {"m.x"}, "m.x": {"train.loop"}, "train.loop": set(),
             "t.c": {"trainer"}, "trainer": set()}
    assert forbidden_imports(graph, ["t.a", "t.b", "t.c"], ("train",)) == [
        "t.a -> m.x -> train.loop", "t.b -> m.x -> train.loop"]  # shortest chains; "trainer" is no "train"


@pytest.mark.parametrize("importers, forbidden", [
    (("teachers",), ("radio.train", "radio.data", "radio.cache", "eval")),
    (("radio",), ("radio.train", "eval")),  # the model pieces, see NOT_MODEL_PIECES
    (("eval",), ("radio.train",)),
])
def test_packages_import_in_one_direction(importers, forbidden):
    """teachers never import the training loop, the data pipeline, the feature cache or eval; the model pieces
    never import the training loop or eval; eval never imports the training loop (through any chain, function-
    level imports included)."""
    graph = import_graph()
    modules = [m for m in graph if _within(m, importers) and not _within(m, NOT_MODEL_PIECES)]
    assert modules
    if importers == ("radio",):
        pieces = {"radio", "radio.model", "radio.normalize", "radio.losses", "radio.tome", "radio.export"}
        assert pieces | {"radio.fidelity"} <= set(modules)
    bad = forbidden_imports(graph, modules, forbidden)
    assert not bad, "imports against the package direction: " + "; ".join(bad)


def test_only_the_cli_imports_eval():
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if not _within(m, ("eval", "radio.cli"))
                 for t in targets if _within(t, ("eval",)))
    assert not bad, "modules outside eval and radio.cli that import eval: " + "; ".join(bad)
