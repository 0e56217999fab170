"""radio: agglomerative vision-encoder distillation.

    import radio
    model = radio.load("runs/demo/student")     # eval-mode student, no teacher libraries needed
    out = model(images)                          # images: float NCHW in [0, 1]
    out = model(images, num_tokens=256)          # patch tokens merged to a fixed budget (radio.tome)

Importing radio also registers the student with timm (`timm.create_model("radio_student", ...)`) and, as soon
as transformers is imported, with transformers' AutoConfig/AutoModel (radio.export.hf; model_type
"radio_student").
"""
from radio import tome
from radio._import_hooks import import_after
from radio.export import load
from radio.export import timm as _timm  # noqa: F401  (registers the "radio_student" timm entry point)

import_after("transformers", "radio.export.hf")

__version__ = "0.1.0"
__all__ = ["load", "tome", "__version__"]
