"""The one-shot post-import hook that registers radio's transformers integration."""
import sys

import pytest

from radio._import_hooks import _PostImportFinder, import_after


@pytest.fixture
def libs(tmp_path, monkeypatch):
    (tmp_path / "hooklib_a.py").write_text("VALUE = 1\n")
    (tmp_path / "hooklib_glue.py").write_text("import hooklib_a\nhooklib_a.REGISTERED = hooklib_a.VALUE + 1\n")
    (tmp_path / "hooklib_bad_glue.py").write_text("raise ImportError('glue is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("hooklib_a", "hooklib_glue", "hooklib_bad_glue"):
        sys.modules.pop(name, None)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PostImportFinder)
                        or not f.library.startswith("hooklib")]


def test_integration_runs_after_the_library_is_imported_and_only_then(libs):
    import_after("hooklib_a", "hooklib_glue")
    import_after("hooklib_a", "hooklib_glue")  # idempotent: one finder
    assert "hooklib_glue" not in sys.modules
    assert sum(isinstance(f, _PostImportFinder) and f.library == "hooklib_a" for f in sys.meta_path) == 1
    import hooklib_a

    assert hooklib_a.REGISTERED == 2 and "hooklib_glue" in sys.modules
    assert not any(isinstance(f, _PostImportFinder) and f.library == "hooklib_a" for f in sys.meta_path)


def test_library_already_imported_runs_the_integration_now(libs):
    import hooklib_a

    import_after("hooklib_a", "hooklib_glue")
    assert hooklib_a.REGISTERED == 2


def test_a_broken_integration_warns_but_never_breaks_the_library_import(libs):
    import_after("hooklib_a", "hooklib_bad_glue")
    with pytest.warns(RuntimeWarning, match="importing hooklib_bad_glue after hooklib_a failed.*glue is broken"):
        import hooklib_a
    assert hooklib_a.VALUE == 1
