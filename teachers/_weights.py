"""Shared helpers for locating pretrained weights and reporting failures clearly.

Every family resolves its weights through these, so that a missing weight gives one error of one shape:
the teacher, the hub name or path tried, the cause, and how to pass a local file instead.

Offline behaviour: with `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) nothing is downloaded and only local
caches are used. Without it, `hub_guard` first probes the hub once with a short timeout; when the hub cannot be
reached it runs the library call in huggingface_hub's offline mode, so a machine without a network fails in
seconds with the error below instead of waiting through the library's download retries (about 25 s per file).
"""
from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator

PROBE_TIMEOUT_S = 5.0


class TeacherWeightsError(RuntimeError):
    """Pretrained weights could not be found or loaded."""


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz")


def local_path(pretrained: str | bool | None, hub_ids: bool = False) -> str | None:
    """The local file or directory named by `pretrained`, or None when it is a tag / hub name / default.

    A string counts as a path when it exists, starts with `/`, `~` or `.`, or ends with a weight-file suffix;
    otherwise, when it contains a path separator, it is a path unless `hub_ids` (then `org/name` is a hub repo).
    """
    if not isinstance(pretrained, str):
        return None
    if (os.path.exists(pretrained) or pretrained.startswith(("/", "~", "."))
            or pretrained.endswith(WEIGHT_SUFFIXES) or (os.sep in pretrained and not hub_ids)):
        return os.path.expanduser(pretrained)
    return None


def _brief(cause: BaseException, limit: int = 400) -> str:
    """The cause's message on one line, shortened."""
    text = " ".join(line.strip() for line in str(cause).strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit] + "..."


def weights_error(teacher: str, tried: str, how: str, cause: BaseException) -> TeacherWeightsError:
    """The one error every family raises when pretrained weights are missing or unreadable.

    Args:
        teacher: the registered teacher name (clip, siglip, dino_v2, sam, hf).
        tried: the hub name or local path that was tried.
        how: a recipe line showing how to pass a local file, e.g. `pretrained: /path/to/model.safetensors`.
        cause: the library's exception.
    """
    return TeacherWeightsError(
        f"teacher {teacher!r}: could not load pretrained weights from {tried} "
        f"({type(cause).__name__}: {_brief(cause)}). "
        f"Offline? Pass a local file instead: {how}")


def require_local(teacher: str, path: str, how: str) -> str:
    """`path` if it exists, else the weights error naming it (before any model is built)."""
    if not os.path.exists(path):
        raise weights_error(teacher, f"local path {path}", how, FileNotFoundError(f"no such file: {path}"))
    return path


def hub_offline() -> bool:
    """True when huggingface_hub is in offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm, open_clip and transformers
        return True
    return bool(constants.HF_HUB_OFFLINE)


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a HEAD request to `url` gets any HTTP answer within `timeout` seconds."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:  # an answer, even 4xx/5xx: the host is reachable
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def hub_guard() -> Iterator[None]:
    """Run a hub download without long retries: offline mode for the duration when the hub is unreachable."""
    if hub_offline():
        yield
        return
    from huggingface_hub import constants

    if reachable(constants.ENDPOINT):
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
