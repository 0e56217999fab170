"""The options every probe reads (`radio eval PROBE --help`), shared by eval.run and eval.probes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from eval.vlm import VLMConfig


@dataclass
class EvalOptions:
    """Options shared by the probes (see `radio eval PROBE --help`)."""

    resolution: int = 224
    batch_size: int = 64
    device: str = "cpu"
    progress: bool = True
    limit: Optional[int] = None
    layout: Optional[str] = None
    num_classes: Optional[int] = None
    label_fields: Optional[tuple[str, ...]] = None
    k: int = 20
    temperature: float = 0.07
    linear_epochs: int = 30
    linear_lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    seg_epochs: int = 20
    seg_lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    adaptor: Optional[str] = None
    templates: str = "simple"
    classnames: Optional[str] = None
    resolutions: Optional[list[int]] = None
    fidelity_images: int = 64
    vlm: VLMConfig = field(default_factory=VLMConfig)
    vlm_data: Optional[str] = None
    vlm_limit: Optional[int] = 250
    pca_images: int = 4
    with_teachers: bool = False
