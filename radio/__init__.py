"""radio: agglomerative vision-encoder distillation.

    import radio
    model = radio.load("runs/demo/student")     # eval-mode student, no teacher libraries needed
    out = model(images)                          # images: float NCHW in [0, 1]
"""
from radio.export import load

__version__ = "0.1.0"
__all__ = ["load", "__version__"]
