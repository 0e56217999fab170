"""Bundled recipes (YAML), shipped as package data so `radio demo` finds them in any install."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def path(name: str) -> Path:
    """Path of a bundled recipe, e.g. `path("demo")` -> .../recipes/demo.yaml."""
    fname = name if name.endswith(".yaml") else f"{name}.yaml"
    p = Path(str(resources.files(__name__) / fname))
    if not p.is_file():
        names = sorted(q.name for q in Path(str(resources.files(__name__))).glob("*.yaml"))
        raise FileNotFoundError(f"no bundled recipe {fname!r}; available: {', '.join(names)}")
    return p
