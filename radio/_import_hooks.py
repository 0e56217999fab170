"""Run an integration module right after a third-party library is imported (a one-shot post-import hook).

`import radio` must register its transformers Auto classes, yet must not import transformers (seconds of
import time, and a teacher library that `radio.load` does without). So: if the library is already imported,
import the integration now; otherwise a meta-path finder waits for the library's first import, lets it finish,
then imports the integration (which registers itself). Nothing else changes in the import system; the finder
removes itself on first use.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any


def _import_integration(integration: str, library: str) -> None:
    try:
        importlib.import_module(integration)
    except Exception as e:  # never break the user's import of the library itself
        warnings.warn(f"radio: importing {integration} after {library} failed ({type(e).__name__}: {e}); "
                      f"import {integration} yourself to see the error", RuntimeWarning, stacklevel=3)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self, library: str, integration: str) -> None:
        self.library = library
        self.integration = integration

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> Any:
        if fullname != self.library:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        inner = spec.loader.exec_module
        library, integration = self.library, self.integration

        def exec_module(module: ModuleType) -> None:
            inner(module)
            _import_integration(integration, library)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own loader only
        return spec


def import_after(library: str, integration: str) -> None:
    """Import `integration` once `library` is imported (now, if it already is)."""
    if library in sys.modules:
        _import_integration(integration, library)
        return
    if not any(isinstance(f, _PostImportFinder) and f.library == library for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder(library, integration))
