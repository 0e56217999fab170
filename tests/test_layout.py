"""The dependency direction of DESIGN.md section 1, checked in fresh interpreters."""
import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


@pytest.mark.parametrize("code", [
    "import teachers, radio.cache.writer; teachers.available()",
    "import radio.model, radio.normalize, radio.losses, radio.export, radio.onnx_export, radio.timm_student, "
    "radio.hf, radio.fidelity",
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
