"""The options every probe reads (`radio eval PROBE --help`), shared by eval.run and eval.probes."""
from __future__ import annotations

from dataclasses import dataclass, field

from eval.vlm import VLMConfig


@dataclass
class EvalOptions:
    """Options shared by the probes (see `radio eval PROBE --help`)."""

    resolution: int = 224
    batch_size: int = 64
    device: str = "cpu"
    progress: bool = True
    limit: int | None = None
    layout: str | None = None
    num_classes: int | None = None
    label_fields: tuple[str, ...] | None = None
    k: int = 20
    temperature: float = 0.07
    linear_epochs: int = 30
    linear_lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    seg_epochs: int = 20
    seg_lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    adaptor: str | None = None
    templates: str = "simple"
    classnames: str | None = None
    resolutions: list[int] | None = None
    fidelity_images: int = 64
    vlm: VLMConfig = field(default_factory=VLMConfig)
    vlm_data: str | None = None
    vlm_limit: int | None = 250
    pca_images: int = 4
    with_teachers: bool = False
    # exports must carry checksums that match (radio.load's verify=True); False skips, None only warns
    verify: bool | None = True
