"""Frozen teachers: one adapter per library, a registry, and a uniform `Teacher` interface.

    t = teachers.build("dino_v2")                       # pretrained default
    t = teachers.build({"name": "clip", "pretrained": False, "arch": {...}})
    out = t(images)                                      # TeacherOutput(summary (B, C), features (B, C, h, w))
"""
from teachers.base import Teacher, TeacherOutput, TeacherSpec
from teachers.registry import TEACHERS, as_spec, available, build, register_teacher

__all__ = ["Teacher", "TeacherOutput", "TeacherSpec", "TEACHERS", "as_spec", "available", "build",
           "register_teacher"]
