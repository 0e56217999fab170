"""radio: agglomerative vision-encoder distillation.

    import radio
    model = radio.load("runs/demo/student")     # eval-mode student, no teacher libraries needed
    out = model(images)                          # images: float NCHW in [0, 1]
    out = model(images, num_tokens=256)          # patch tokens merged to a fixed budget (radio.tome)

Importing radio also registers the student with timm (`timm.create_model("radio_student", ...)`) and, as soon
as transformers is imported, with transformers' AutoConfig/AutoModel (radio.hf; model_type "radio_student").
"""
from radio import timm_student  # noqa: F401  (registers the "radio_student" timm entry point)
from radio import tome
from radio._import_hooks import import_after
from radio.export import load

import_after("transformers", "radio.hf")

__version__ = "0.1.0"
__all__ = ["load", "tome", "__version__"]
