"""Frozen teachers: one adapter per library, a registry, and a uniform `Teacher` interface.

    t = teachers.build("dino_v2")                       # pretrained default
    t = teachers.build({"name": "clip", "pretrained": False, "arch": {...}})
    out = t(images)                                      # TeacherOutput(summary (B, C), features (B, C, h, w))

Families: clip, siglip (open_clip), dino_v2 (timm), sam (segment_anything), hf (transformers vision towers).
A spec read from a file the user did not write goes through `untrusted_spec` (no code-running options).
"""
# the built-in families register themselves on import (each imports its library only when a teacher is built)
from teachers import dinov2, hf, open_clip, sam  # noqa: F401
from teachers._weights import TeacherWeightsError
from teachers.base import CanvasRegion, Teacher, TeacherOutput, TeacherSpec
from teachers.registry import (
    CODE_RUNNING_OPTIONS,
    TEACHERS,
    UntrustedSpecError,
    as_spec,
    available,
    build,
    register_teacher,
    untrusted_spec,
)

__all__ = ["CanvasRegion", "CODE_RUNNING_OPTIONS", "Teacher", "TeacherOutput", "TeacherSpec", "TeacherWeightsError",
           "TEACHERS", "UntrustedSpecError", "as_spec", "available", "build", "register_teacher", "untrusted_spec"]
