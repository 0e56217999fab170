"""The distillation system as a LightningModule.

Per training step, for every partition of the batch (one batch per resolution, radio.data.schedule): the frozen
teachers of that partition give targets (directly, or through a mosaic, radio.train.targets); during the first
`normalization.estimate_steps` steps their features also feed the normalizers' statistics (refitted at power-of-
two steps, then frozen); the student runs once per partition; per teacher, its adaptor's outputs are compared
with the normalized targets after grid matching; per-teacher and per-partition weighted losses are summed into
one optimizer step. Validation measures fidelity and cos-error per teacher at several resolutions
(radio.fidelity) and writes fidelity.json / fidelity.png beside the logs.

Long runs (radio.train.guard): every step's randomness (the student's position-embedding crops) is seeded from
(seed, step, rank), so a resumed run repeats the interrupted one; a step whose loss is non-finite on any rank
is skipped everywhere (its `train/loss` is logged as nan), and too many in a row save a checkpoint and stop the
run; the data loader's bad-sample counts are summed over ranks, logged (`data/*`) and held against
`data.max_bad_fraction` (past it, the run saves a checkpoint after the step and stops); `health.json` beside the
logs reports them at the end, and why the run stopped if it did. Checkpoints carry the normalizers' statistics
merged over ranks, so a resume (on any number of ranks) continues their estimation exactly; a resume trains at the
recipe's `model.optimizer.lr` even if the checkpoint was trained at another one.

References: AM-RADIO (Ranzinger et al., CVPR 2024); PHI-S (Ranzinger et al., 2024); RADIOv2.5 (Heinrich et al.,
2024).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

import teachers as teacher_lib
from radio.cache.checks import check_against_teachers
from radio.data.health import BadDataError, DataHealth, check_bad_fraction
from radio.data.transforms import resize_grid, resize_images
from radio.fidelity import FidelityHistory, FidelityMetric
from radio.losses import LossConfig, feature_loss, match_grids, summary_cosine_loss, tokens_to_grid
from radio.model import AdaptorConfig, ModelConfig, RADIOModel, StudentConfig, TeacherHead
from radio.normalize import AffineNormalizer, all_reduce_moments
from radio.train.config import (NormalizationConfig, OptimConfig, StabilityConfig, TeacherEntry, ValidationConfig,
                                coerce, to_plain)
from radio.train.guard import NonFiniteLossError, RunGuard
from radio.train.optim import build_optimizer
from radio.train.targets import Targets, cached_targets, mosaic_plan, summary_target_loss, teacher_targets

__all__ = ["DistillModule", "NonFiniteLossError"]
HEALTH_NAME = "health.json"


def _is_refit_step(step: int) -> bool:
    """Refit the normalizers after steps 1, 2, 4, 8, ... (1-based), so early targets settle quickly."""
    n = step + 1
    return n & (n - 1) == 0


class DistillModule(L.LightningModule):
    """Multi-teacher, multi-resolution distillation into one student.

    Args:
        student: the student's architecture.
        teachers: the teachers, their loss weights, normalizers and mosaic use.
        loss: loss choices.
        optimizer: AdamW + warm-up/cosine schedule.
        adaptor: adaptor MLP shape.
        normalization: how long the normalizers estimate their statistics.
        validation: the resolutions at which fidelity is measured.
        stability: what happens when the loss goes non-finite.
    """

    def __init__(self, student: StudentConfig, teachers: list[TeacherEntry], loss: LossConfig = LossConfig(),
                 optimizer: OptimConfig = OptimConfig(), adaptor: AdaptorConfig = AdaptorConfig(),
                 normalization: NormalizationConfig = NormalizationConfig(),
                 validation: ValidationConfig = ValidationConfig(),
                 stability: StabilityConfig = StabilityConfig()) -> None:
        super().__init__()
        student = coerce(StudentConfig, student, "model.student")
        entries = [coerce(TeacherEntry, t, f"model.teachers[{i}]") for i, t in enumerate(teachers)]
        if not entries:
            raise ValueError("model.teachers: at least one teacher is needed")
        names = [e.name for e in entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model.teachers: name(s) {dup} appear more than once")
        self.loss_cfg = coerce(LossConfig, loss, "model.loss")
        self.optim_cfg = coerce(OptimConfig, optimizer, "model.optimizer")
        self.norm_cfg = coerce(NormalizationConfig, normalization, "model.normalization")
        self.val_cfg = coerce(ValidationConfig, validation, "model.validation")
        self.stability_cfg = coerce(StabilityConfig, stability, "model.stability")
        if self.stability_cfg.max_nonfinite_steps < 1:
            raise ValueError("model.stability.max_nonfinite_steps: must be >= 1, got "
                             f"{self.stability_cfg.max_nonfinite_steps}")
        if self.norm_cfg.estimate_steps < 1:
            raise ValueError(f"model.normalization.estimate_steps: must be >= 1, got {self.norm_cfg.estimate_steps}")
        adaptor = coerce(AdaptorConfig, adaptor, "model.adaptor")
        self.entries = entries
        self.entry = {e.name: e for e in entries}
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"student": to_plain(student), "teachers": to_plain(entries),
                                   "loss": to_plain(self.loss_cfg), "optimizer": to_plain(self.optim_cfg),
                                   "adaptor": to_plain(adaptor), "normalization": to_plain(self.norm_cfg),
                                   "validation": to_plain(self.val_cfg),
                                   "stability": to_plain(self.stability_cfg)})
        # Teachers are deliberately not submodules: never in the optimizer, the state dict or checkpoints.
        self._teachers = {e.name: teacher_lib.build(e.spec()) for e in entries}
        heads = [TeacherHead(e.name, t.summary_dim or None, t.feature_dim, t.patch_size, e.normalizer)
                 for e, t in zip(entries, self._teachers.values())]
        self.model = RADIOModel(ModelConfig(student=student, teachers=heads, adaptor=adaptor))
        # Normalizer statistics are rank-local until merged (radio.normalize): DDP must not broadcast rank 0's
        # buffers over them at every forward.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, [f"model.normalizers.{n}" for n, _ in self.model.normalizers.named_buffers()])
        self.fidelity_history = FidelityHistory()
        self._metrics: dict[tuple[str, int], FidelityMetric] = {}
        self._val_resolutions: list[int] = []
        self._skip_validation = False
        self.guard = RunGuard(self.stability_cfg.max_nonfinite_steps)
        self._skip_update = False
        self._bad_data: Optional[BadDataError] = None  # too much bad data: stop after this step

    # -- teachers --------------------------------------------------------------------------------------------
    @property
    def teachers(self) -> dict[str, teacher_lib.Teacher]:
        return self._teachers

    @property
    def patch_size(self) -> int:
        return self.model.resolution_step

    def _teachers_to_device(self) -> None:
        for t in self._teachers.values():
            if t._mean.device != self.device:
                t.to(self.device)

    def _schedule(self):
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(dm, "schedule", None)

    def on_fit_start(self) -> None:
        self._teachers_to_device()
        schedule = self._schedule()
        if schedule is not None:
            self.check_schedule(schedule)
        dm = self.trainer.datamodule
        if getattr(dm, "cache_layout", None) is not None:  # training reads some teachers from a feature cache
            grid = (dm.resolution // self.patch_size,) * 2
            check_against_teachers(dm.cache_layout, self._teachers, {e.name: e.spec() for e in self.entries},
                                   {e.name: e.mosaic for e in self.entries}, grid)

    def check_schedule(self, schedule) -> None:
        """Fail if a summary teacher would only ever see mosaics (its summary head would never train)."""
        for i, e in enumerate(self.entries):
            t = self._teachers[e.name]
            if not (e.mosaic and t.has_summary):
                continue
            plain = [p for s in schedule.stages for p in s.partitions
                     if (p.teachers is None or e.name in p.teachers)
                     and mosaic_plan(t, (p.resolution // self.patch_size,) * 2) is None]
            if not plain:
                raise ValueError(f"model.teachers[{i}] ({e.name}): mosaic is on and every partition it supervises "
                                 "fits a mosaic, so its summary head would never be trained; add a partition where "
                                 "it runs directly (e.g. a higher resolution) or set mosaic: false")

    # -- targets and normalizers -----------------------------------------------------------------------------
    @staticmethod
    def _partitions(batch: dict[str, Any]) -> list[dict[str, Any]]:
        if "partitions" in batch:
            return batch["partitions"]
        return [{"image": batch["image"], "teachers": None, "weight": 1.0,
                 "resolution": int(batch["image"].shape[-1])}]

    def _grid(self, images: Tensor) -> tuple[int, int]:
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size

    def partition_targets(self, part: dict[str, Any], mosaic: bool = True) -> dict[str, Targets]:
        names = part.get("teachers") or [e.name for e in self.entries]
        grid = self._grid(part["image"])
        cached = part.get("cached") or {}  # teachers read from the feature cache do not run
        return {n: cached_targets(cached[n], self._teachers[n], grid) if n in cached else
                teacher_targets(self._teachers[n], part["image"], grid, mosaic=mosaic and self.entry[n].mosaic)
                for n in names}

    @torch.no_grad()
    def observe_targets(self, targets: list[dict[str, Targets]], step: int,
                        supervised: Optional[set[str]] = None) -> None:
        """Stream this step's raw teacher features into the normalizers still estimating; fit or freeze them.

        `supervised`: the teachers of this step's partitions on every rank (fitting all-reduces, so a rank whose
        partitions came out empty still takes part); None means those with targets here.
        """
        for name, norm in self.model.normalizers.items():
            if not norm.needs_statistics:
                continue
            feats = [t[name].features for t in targets if name in t]
            if not feats and (supervised is None or name not in supervised):
                continue
            for f in feats:
                norm.update(f.permute(0, 2, 3, 1))
            if step + 1 >= self.norm_cfg.estimate_steps:
                norm.freeze()
            elif _is_refit_step(step) or not norm.ready:
                norm.fit()

    def _normalized(self, name: str, features: Tensor) -> Tensor:
        """(B, C, h, w) raw teacher features -> normalized, same layout."""
        return self.model.normalizers[name](features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    # -- losses ----------------------------------------------------------------------------------------------
    def partition_losses(self, images: Tensor, targets: dict[str, Targets]) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted loss of one partition and its per-teacher terms ("{teacher}/feature", "{teacher}/summary")."""
        tokens = self.model.forward_tokens(images)
        total = images.new_zeros(())
        terms: dict[str, Tensor] = {}
        for name, tg in targets.items():
            e = self.entry[name]
            pred = self.model.adapt(name, tokens, normalized=True)
            pfeat, tfeat = match_grids(tokens_to_grid(pred.features, tokens.grid), self._normalized(name, tg.features))
            f_loss = feature_loss(pfeat, tfeat, self.loss_cfg)
            terms[f"{name}/feature"] = f_loss
            total = total + e.feature_weight * f_loss
            s_loss = summary_target_loss(pred.summary, tg)
            if s_loss is not None:
                terms[f"{name}/summary"] = s_loss
                total = total + e.summary_weight * s_loss
            elif pred.summary is not None:  # mosaic or cached crops: no summary target; keep the head in the graph
                total = total + 0.0 * pred.summary.sum()
        return total, terms

    def distill_losses(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and terms of one batch of images in [0, 1] against every teacher (no mosaic, no statistics)."""
        return self.partition_losses(images, self.partition_targets({"image": images}, mosaic=False))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._teachers_to_device()
        all_parts = self._partitions(batch)
        parts = [p for p in all_parts if p["image"].shape[0] > 0]  # every sample of a partition may be bad
        targets = [self.partition_targets(p) for p in parts]
        supervised = {n for p in all_parts for n in (p.get("teachers") or self.entry)}
        self.observe_targets(targets, self.global_step, supervised)
        total = self._touch_parameters() if len(parts) < len(all_parts) else None  # DDP: every parameter used
        per_term: dict[str, list[Tensor]] = {}
        named: dict[str, Tensor] = {}
        for p, tg in zip(parts, targets):
            loss, terms = self.partition_losses(p["image"], tg)
            total = p["weight"] * loss if total is None else total + p["weight"] * loss
            bs, r = p["image"].shape[0], p["image"].shape[-1]
            self.log_dict({f"train/{k}@{r}": v for k, v in terms.items()}, batch_size=bs)
            for k, v in terms.items():
                per_term.setdefault(k, []).append(v.detach())
                named[f"{k}@{r}"] = v
        if total is None:
            total = self._touch_parameters()
        # "train/{teacher}/{feature,summary}": the mean over this step's partitions that carry the term
        self.log_dict({f"train/{k}": torch.stack(v).mean() for k, v in per_term.items()}, batch_size=1)
        self._guard_step(batch, total, named)
        if "stage" in batch:
            self.log("train/stage", float(batch["stage"]), batch_size=1)
        if self._skip_update:  # a gradient-free stand-in keeps every rank's backward and DDP in step
            return self._touch_parameters()
        return total

    def _touch_parameters(self) -> Tensor:
        """A zero loss that reaches every trainable parameter (zero gradients)."""
        return sum((p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad),
                   torch.zeros((), device=self.device))

    def _guard_step(self, batch: dict[str, Any], total: Tensor, terms: dict[str, Tensor]) -> None:
        """Global non-finite decision, data counts and bad-fraction check for this step (radio.train.guard)."""
        data = batch.get("data") or {}
        reads, bad = int(data.get("reads", 0)), len(data.get("faults", ()))
        reduce = ((lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")) if self._trainer is not None
                  else (lambda t: t))
        verdict = self.guard.observe(self.global_step, total, terms, reads, bad, reduce)
        self._skip_update = verdict.skip
        self.log("train/loss", verdict.loss, prog_bar=True, batch_size=1)  # nan for a skipped step
        self.log_dict({"train/skipped_steps": float(self.guard.skipped), "data/samples_read": float(self.guard.reads),
                       "data/bad_samples": float(self.guard.bad)}, batch_size=1)
        dm = self._datamodule()
        if dm is not None and hasattr(dm, "max_bad_fraction"):
            try:
                check_bad_fraction(self.guard.reads, self.guard.bad, dm.max_bad_fraction,
                                   dm.min_reads_for_bad_fraction, dm.health)
            except BadDataError as e:  # the step's own samples were good: it completes, then the run stops
                self._bad_data = e

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed this step's randomness from (seed, step, rank): a resumed run draws what the interrupted one did."""
        base = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        rank = self.trainer.global_rank if self._trainer is not None else 0
        seed = np.random.SeedSequence([base, self.global_step, rank, 0x57E9]).generate_state(1, dtype=np.uint32)
        torch.manual_seed(int(seed[0]))

    def on_before_optimizer_step(self, optimizer) -> None:
        """A skipped step: drop the gradients, so the optimizer changes nothing (no moments, no weight decay)."""
        if self._skip_update:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.guard.must_stop:
            cb = self._radio_checkpoint()
            earlier = cb.saved_before(self.guard.first_bad_step) if cb is not None else None
            self._save_and_stop(NonFiniteLossError, "nonfinite",
                                lambda path: self.guard.stop_message(self.global_step - 1, path, earlier))
        if self._bad_data is not None:
            error, self._bad_data = self._bad_data, None
            self._save_and_stop(BadDataError, "baddata", lambda path: (
                f"training stopped after step {self.global_step - 1}: {error}; "
                + (f"checkpoint saved to {path}" if path else "no checkpoint could be saved")))

    def _save_and_stop(self, error: type[Exception], kind: str, message: Callable[[Optional[str]], str]) -> None:
        """Save a checkpoint of the run so far (`last.ckpt`: the kept step checkpoints stay those of before), write
        health.json with why it stopped, raise `error`."""
        from radio.train.callbacks import atomic_save_checkpoint

        cb = self._radio_checkpoint()
        path: Optional[str]
        try:
            if cb is not None:
                path = cb.save_now(self.trainer, step_checkpoint=False)
            else:
                path = os.path.join(self.trainer.default_root_dir, f"{kind}-step={self.global_step}.ckpt")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                atomic_save_checkpoint(self.trainer, path)
        except OSError as e:
            warnings.warn(f"could not save a checkpoint before stopping: {e}", stacklevel=1)
            path = None
        text = message(path)
        self.write_health_report(stopped=text)
        raise error(text)

    def _radio_checkpoint(self):
        from radio.train.callbacks import RadioCheckpoint

        return next((c for c in self.trainer.checkpoint_callbacks if isinstance(c, RadioCheckpoint)), None)

    # -- run health ------------------------------------------------------------------------------------------
    def _datamodule(self):
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def health_report(self, stopped: Optional[str] = None) -> dict[str, Any]:
        """The run's data faults (merged over ranks) and skipped steps; call on every rank (a collective)."""
        from radio.data.datamodule import _all_gather_objects

        dm = self._datamodule()
        health = DataHealth()
        local = dm.health.state_dict() if dm is not None and hasattr(dm, "health") else {}
        for state in _all_gather_objects(local):
            health.merge(DataHealth.from_state(state))
        g = self.guard
        return {"steps": int(self.global_step), "samples_read": g.reads, "bad_reads": g.bad,
                "bad_fraction": g.bad / g.reads if g.reads else 0.0, "distinct_faults": health.total,
                "faults_by_kind": health.by_kind(), "faults": [f.to_dict() for f in health.all()[:1000]],
                "skipped_steps": g.skipped, "stopped": stopped}

    def write_health_report(self, stopped: Optional[str] = None) -> Optional[Path]:
        """Write `health.json` beside the logs (rank 0) and print a one-line summary."""
        report = self.health_report(stopped)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        if not (log_dir and self.trainer.is_global_zero):
            return None
        path = Path(log_dir) / HEALTH_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        kinds = ", ".join(f"{k}: {n}" for k, n in report["faults_by_kind"].items()) or "none"
        rank_zero_info(f"run health: {report['bad_reads']} bad of {report['samples_read']} samples read; "
                       f"{report['distinct_faults']} distinct bad items ({kinds}); {report['skipped_steps']} "
                       f"non-finite steps skipped -> {path}")
        return path

    def on_train_end(self) -> None:
        self.write_health_report()

    # -- validation ------------------------------------------------------------------------------------------
    def _primary_resolution(self, fallback: int) -> int:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(dm, "resolution", fallback))

    def validation_resolutions(self, fallback: int) -> list[int]:
        if self.val_cfg.resolutions:
            res = list(self.val_cfg.resolutions)
        else:
            schedule = self._schedule()
            res = schedule.resolutions() if schedule is not None else [fallback]
        return sorted(set(res) | {self._primary_resolution(fallback)})

    def on_validation_start(self) -> None:
        self._teachers_to_device()
        unfitted = [n for n, m in self.model.normalizers.items() if not m.ready]
        self._skip_validation = bool(unfitted)
        if unfitted:
            warnings.warn(f"validation skipped: the normalizers of {unfitted} have no statistics yet (they are "
                          "estimated during training)", stacklevel=1)
        self._metrics = {}
        self._val_resolutions = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self._skip_validation:
            return
        images = batch["image"]
        if not self._val_resolutions:
            self._val_resolutions = self.validation_resolutions(images.shape[-1])
        primary = self._primary_resolution(images.shape[-1])
        for r in self._val_resolutions:
            x = resize_images(images, (r, r))
            tokens = self.model.forward_tokens(x)
            total = x.new_zeros(())
            for e in self.entries:
                tg = teacher_targets(self._teachers[e.name], x, tokens.grid, mosaic=False)
                pred = self.model.adapt(e.name, tokens, normalized=True)
                pgrid = tokens_to_grid(pred.features, tokens.grid)
                if r == primary:
                    pf, tf = match_grids(pgrid, self._normalized(e.name, tg.features))
                    f_loss = feature_loss(pf, tf, self.loss_cfg)
                    self.log(f"val/{e.name}/feature", f_loss, batch_size=x.shape[0])
                    total = total + e.feature_weight * f_loss
                    if pred.summary is not None and tg.summary is not None:
                        s_loss = summary_cosine_loss(pred.summary, tg.summary)
                        self.log(f"val/{e.name}/summary", s_loss, batch_size=x.shape[0])
                        total = total + e.summary_weight * s_loss
                praw = self.model.normalizers[e.name].inverse(pred.features)
                key = (e.name, r)
                if key not in self._metrics:
                    self._metrics[key] = FidelityMetric(tg.features.shape[1]).to(self.device)
                self._metrics[key].update(tokens_to_grid(praw, tokens.grid), resize_grid(tg.features, tokens.grid),
                                          pred.summary, tg.summary)
            if r == primary:
                self.log("val/loss", total, prog_bar=True, batch_size=x.shape[0])

    def on_validation_epoch_end(self) -> None:
        if self._skip_validation or not self._metrics:
            return
        primary = self._primary_resolution(max(self._val_resolutions))
        values: dict[str, dict[int, dict[str, float]]] = {}
        for (name, r), metric in sorted(self._metrics.items()):
            out = {k: float(v) for k, v in metric.compute().items()}
            values.setdefault(name, {})[r] = out
            for k, v in out.items():
                self.log(f"val/{name}/{k}@{r}", v)
                if r == primary:
                    self.log(f"val/{name}/{k}", v)
        self._metrics = {}
        self.fidelity_history.add(self.global_step, values)
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        if log_dir and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self.fidelity_history.write(log_dir)

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        return build_optimizer(self.model, self.optim_cfg, self._total_steps())

    def _total_steps(self) -> int:
        trainer: Optional[L.Trainer] = getattr(self, "_trainer", None)
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        if trainer is not None:
            est = trainer.estimated_stepping_batches
            if math.isfinite(est):
                return int(est)
        return 10_000

    # -- checkpoints -----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["radio_model_config"] = self.model.config.to_dict()
        checkpoint["radio_teacher_specs"] = to_plain([e.spec() for e in self.entries])
        checkpoint["radio_fidelity_history"] = self.fidelity_history.records
        checkpoint["radio_guard"] = self.guard.state_dict()
        self._store_global_statistics(checkpoint["state_dict"])

    def _store_global_statistics(self, state: dict[str, Tensor]) -> None:
        """Put the normalizers' running statistics merged over ranks into the checkpoint (every rank calls this:
        checkpoints are dumped on all ranks). Frozen ones already hold the global statistics."""
        for name, norm in self.model.normalizers.items():
            if not isinstance(norm, AffineNormalizer) or bool(norm.frozen):
                continue
            m = all_reduce_moments(norm.moments())
            prefix = f"model.normalizers.{name}."
            for key, value in (("count", m.n), ("running_mean", m.mean), ("running_m2", m.m2)):
                if prefix + key in state:
                    state[prefix + key] = value.detach().clone().cpu()

    def _recipe_lr(self, checkpoint: dict[str, Any]) -> None:
        """Resume at the recipe's model.optimizer.lr: where the checkpoint's optimizer and schedule were built for
        another base lr (e.g. one lowered after a non-finite stop), their restored lrs are rescaled to it (the
        schedule's shape and position are kept)."""
        new = float(self.optim_cfg.lr)
        old: set[float] = set()
        for state in checkpoint.get("optimizer_states") or []:
            for g in state.get("param_groups", []):
                base = float(g.get("initial_lr", g.get("lr", new)))
                if not math.isclose(base, new, rel_tol=1e-9):
                    old.add(base)
                    g["lr"] = float(g["lr"]) * new / base if base > 0 else new
                    g["initial_lr"] = new
        for state in checkpoint.get("lr_schedulers") or []:
            bases = [float(b) for b in state.get("base_lrs", [])]
            if bases and any(not math.isclose(b, new, rel_tol=1e-9) for b in bases):
                old.update(bases)
                if state.get("_last_lr"):
                    state["_last_lr"] = [float(v) * new / b if b > 0 else new for v, b in zip(state["_last_lr"], bases)]
                state["base_lrs"] = [new] * len(bases)
        if old:
            rank_zero_info(f"model.optimizer.lr: the recipe's {new:g} replaces the checkpoint's "
                           f"{', '.join(f'{v:g}' for v in sorted(old))} (the resumed run trains at {new:g}, the "
                           f"schedule continuing from step {checkpoint.get('global_step', '?')})")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.fidelity_history.records = list(checkpoint.get("radio_fidelity_history", []))
        self.guard.load_state_dict(checkpoint.get("radio_guard", {}))
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self._recipe_lr(checkpoint)
        rank = self.trainer.global_rank if self._trainer is not None else 0
        if rank == 0:
            return
        # The checkpoint holds the global statistics; rank 0 carries them on, the others restart from zero, so
        # the next all-reduce counts every sample once.
        state = checkpoint.get("state_dict", {})
        for name, norm in self.model.normalizers.items():
            prefix = f"model.normalizers.{name}."
            frozen = state.get(prefix + "frozen")
            if not isinstance(norm, AffineNormalizer) or frozen is None or bool(frozen):
                continue
            for key in ("count", "running_mean", "running_m2"):
                state[prefix + key] = torch.zeros_like(state[prefix + key])
