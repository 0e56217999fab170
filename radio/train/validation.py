"""Validation during training: fidelity and cos-error per teacher at several resolutions, and the loss.

Each validation batch is resized to every measured resolution (`model.validation.resolutions`, default every
training partition resolution, always with the primary one: the datamodule's `resolution`); there the student
runs once and every teacher directly (no mosaic, no feature cache). At the primary resolution the loss and its
terms are those of training (`Objective.loss`), logged as `val/loss` and `val/{teacher}/{feature,summary}`.
At every resolution the adaptors' outputs, mapped back to the teachers' space, feed one FidelityMetric per
(teacher, resolution) (radio.fidelity); at the epoch's end they are logged as `val/{teacher}/{metric}@{res}`
(and without `@res` at the primary resolution), added to the run's FidelityHistory and written beside the logs
(fidelity.json, fidelity.png).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, cast

from torch import Tensor

from radio.data.batch import Partition
from radio.data.transforms import resize_grid, resize_images
from radio.fidelity import FidelityHistory, FidelityMetric
from radio.losses import tokens_to_grid
from radio.train.config import ValidationConfig

if TYPE_CHECKING:
    from radio.normalize import Normalizer
    from radio.train.module import DistillModule


class FidelityValidation:
    """The validation state of one run: its fidelity history and the current epoch's metrics.

    Args:
        cfg: the resolutions to measure at.
    """

    def __init__(self, cfg: ValidationConfig) -> None:
        self.cfg = cfg
        self.history = FidelityHistory()
        self.metrics: dict[tuple[str, int], FidelityMetric] = {}
        self.resolutions: list[int] = []
        self.skip = False

    def measured_resolutions(self, module: DistillModule, fallback: int) -> list[int]:
        """The resolutions measured (`fallback`: the images' side, when the module has no datamodule)."""
        if self.cfg.resolutions:
            res = list(self.cfg.resolutions)
        else:
            schedule = getattr(module.datamodule, "schedule", None)
            res = schedule.resolutions() if schedule is not None else [fallback]
        return sorted(set(res) | {module.primary_resolution(fallback)})

    def start(self, module: DistillModule) -> None:
        """A new epoch; it is skipped while a normalizer has no statistics (they come from training)."""
        unfitted = [n for n, m in module.model.normalizers.items() if not m.ready]
        self.skip = bool(unfitted)
        if unfitted:
            warnings.warn(f"validation skipped: the normalizers of {unfitted} have no statistics yet (they are "
                          "estimated during training)", stacklevel=1)
        self.metrics = {}
        self.resolutions = []

    def step(self, module: DistillModule, images: Tensor) -> None:
        """Measure one batch of images (B, 3, H, W) in [0, 1]."""
        if self.skip:
            return
        if not self.resolutions:
            self.resolutions = self.measured_resolutions(module, images.shape[-1])
        primary = module.primary_resolution(images.shape[-1])
        model = module.model
        for r in self.resolutions:
            x = resize_images(images, (r, r))
            tokens = model.forward_tokens(x)
            targets = module.objective.targets(Partition(x), mosaic=False)
            if r == primary:
                total, terms, preds = module.objective.loss(model, tokens, targets)
                module.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=x.shape[0])
                module.log("val/loss", total, prog_bar=True, batch_size=x.shape[0])
            else:
                preds = {n: model.adapt(n, tokens, normalized=True) for n in targets}
            for name, tg in targets.items():
                pred = preds[name]
                praw = cast("Normalizer", model.normalizers[name]).inverse(pred.features)
                key = (name, r)
                if key not in self.metrics:
                    self.metrics[key] = FidelityMetric(tg.features.shape[1]).to(module.device)
                self.metrics[key].update(tokens_to_grid(praw, tokens.grid),
                                         resize_grid(tg.features, tokens.grid), pred.summary, tg.summary)

    def end(self, module: DistillModule, log_dir: str | None) -> None:
        """Log the epoch's metrics, add them to the history and write it into `log_dir` (None: not
        written)."""
        if self.skip or not self.metrics:
            return
        primary = module.primary_resolution(max(self.resolutions))
        values: dict[str, dict[int, dict[str, float]]] = {}
        for (name, r), metric in sorted(self.metrics.items()):
            out = {k: float(v) for k, v in metric.compute().items()}
            values.setdefault(name, {})[r] = out
            for k, v in out.items():
                module.log(f"val/{name}/{k}@{r}", v)
                if r == primary:
                    module.log(f"val/{name}/{k}", v)
        self.metrics = {}
        self.history.add(module.global_step, values)
        if log_dir:
            self.history.write(log_dir)
