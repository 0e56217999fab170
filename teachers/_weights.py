"""Shared helpers for locating pretrained weights and reporting failures clearly."""
from __future__ import annotations

import os
from typing import Optional, Union


class TeacherWeightsError(RuntimeError):
    """Pretrained weights could not be found or loaded."""


def local_path(pretrained: Union[str, bool, None]) -> Optional[str]:
    """The local file or directory named by `pretrained`, or None when it is a tag / default."""
    if isinstance(pretrained, str) and (os.sep in pretrained or os.path.exists(pretrained)):
        return os.path.expanduser(pretrained)
    return None


def weights_error(teacher: str, tried: str, how: str, cause: BaseException) -> TeacherWeightsError:
    return TeacherWeightsError(
        f"teacher {teacher!r}: could not load pretrained weights from {tried} ({type(cause).__name__}: {cause}). "
        f"Offline? Pass a local file instead: {how}")
