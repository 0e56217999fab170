"""The distilled model as users see it: student backbone + per-teacher adaptors + normalizers + preprocessing.

`RADIOModel` is a plain nn.Module built from a versioned, JSON-serialisable `ModelConfig`; it needs none of the
teacher libraries. Training (radio.train) and export/load (radio.export) both build it from the same config.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from radio import schema
from radio.model.adaptors import AdaptorConfig, TeacherAdaptor
from radio.model.vit import RADIOStudent, StudentConfig
from radio.normalize import Normalizer, build_normalizer
from radio.ranges import Range, fields_errors
from radio.schema import SchemaError, field_path, short
from radio.tome import Merge, TokenMergeConfig, Unmerge, budget_soft_matching, merge_schedule, merge_wavg
from radio.types import AdaptorOutput, IntermediatesOutput, StudentOutput, float_images

FORMAT_VERSION = 3  # 2: TeacherHead.has_adaptor (exports may drop adaptor heads); 3: exports record config_sha256


@dataclass
class TeacherHead:
    """What the model needs to know about one teacher (no teacher library required).

    Args:
        name: adaptor name (the teacher's name in the recipe, e.g. "clip").
        summary_dim: width of the teacher's summary vector, or None when it has none (SAM).
        feature_dim: width of the teacher's patch features.
        patch_size: the teacher's patch size (informational; used by tools that compare grids).
        normalizer: name of the feature normalizer ("none", "phis", ...).
        has_adaptor: whether the model carries this teacher's adaptor heads and normalizer. An export may drop
            them (`radio export --no-adaptors`); the teacher's summary token stays in the backbone either way.
    """

    name: str
    summary_dim: int | None
    feature_dim: int
    patch_size: int = 16
    normalizer: str = "none"
    has_adaptor: bool = True

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        """Problems of a head read from a file (radio.schema): bounded widths (`LIMITS`), a name without '.'
        (it is a key of the state dict) and a normalizer name."""
        errors = fields_errors(where, values, _TEACHER_LIMITS)
        if not values["name"] or "." in values["name"]:
            errors.append(f"{field_path(where, 'name')}: must be a non-empty string without '.', got "
                          f"{short(values['name'])}")
        if not values["normalizer"]:
            errors.append(f"{field_path(where, 'normalizer')}: must be a non-empty string, got ''")
        return errors


@dataclass
class ModelConfig:
    """Everything needed to rebuild a RADIOModel; saved as `config.json` in exports and in checkpoints.

    `tome` holds the token-merging defaults the model starts with (in-network r and schedule, output budget);
    configs written before it existed load with merging off.
    """

    student: StudentConfig
    teachers: list[TeacherHead] = field(default_factory=list)
    adaptor: AdaptorConfig = field(default_factory=AdaptorConfig)
    format_version: int = FORMAT_VERSION
    tome: TokenMergeConfig = field(default_factory=TokenMergeConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["student"]["mean"] = list(self.student.mean)
        d["student"]["std"] = list(self.student.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> ModelConfig:
        """Parse and validate a config dict (radio.schema); every error names the source and the key.

        Every value is type- and range-checked (an export is untrusted input): ints are ints (not bools,
        floats or strings), widths and depths are positive and bounded (`LIMITS`), mean and std have 3 finite
        entries and std is > 0, format_version is a positive int no newer than `FORMAT_VERSION`.
        """
        if not isinstance(d, dict):
            raise SchemaError([f"{source}: must be a JSON object, got {type(d).__name__}"])
        version = d.get("format_version")
        if version is None:
            raise SchemaError([f"{source}: missing key(s) ['format_version']"])
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SchemaError([f"{source}: format_version: must be a positive integer, got {short(version)}"])
        if version > FORMAT_VERSION:
            raise SchemaError([f"{source}: format_version {version!r} is newer than this radio supports "
                               f"({FORMAT_VERSION}); upgrade radio to load it"])
        try:
            return schema.from_dict(cls, d, "")
        except SchemaError as e:
            raise e.prefixed(source) from None

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        """The bounds of a config read from a file (`LIMITS`), on top of its parts' own checks."""
        errors = fields_errors(field_path(where, "student"), values["student"], _STUDENT_LIMITS)
        errors += fields_errors(field_path(where, "adaptor"), values["adaptor"], _ADAPTOR_LIMITS)
        errors += fields_errors(field_path(where, "tome"), values["tome"], _TOME_LIMITS)
        if len(values["teachers"]) > LIMITS["teachers"]:
            n = len(values["teachers"])
            errors.append(f"{field_path(where, 'teachers')}: must hold at most {LIMITS['teachers']}, got {n}")
        return errors


# Bounds of a config read from a file: far above any real model, low enough that a corrupted value fails here
# (an ExportError naming the key) rather than in torch or timm, or by allocating memory.
LIMITS = {"width": 1 << 16, "depth": 1024, "patch": 1024, "side": 1 << 16, "tokens": 1 << 20, "teachers": 256}


def _count(lo: int, hi: int, optional: bool = False) -> Range:
    return Range(lo=lo, hi=hi, integer=True, optional=optional)


_W, _D = LIMITS["width"], LIMITS["depth"]
_STUDENT_LIMITS = {
    "patch_size": _count(1, LIMITS["patch"]), "embed_dim": _count(1, _W, True), "depth": _count(1, _D, True),
    "num_heads": _count(1, _W, True), "mlp_ratio": Range(lo=0, hi=64, lo_open=True),
    "num_registers": _count(0, _D, True), "register_multiple": _count(0, _D),
    "max_resolution": _count(1, LIMITS["side"]), "cpe_drop": Range(lo=0, hi=1),
    "drop_path": Range(lo=0, hi=1),
    "train_merge_r": _count(0, LIMITS["tokens"]),
}  # mean, std, arch, train_merge_schedule: StudentConfig.check
_TEACHER_LIMITS = {"summary_dim": _count(0, _W, True), "feature_dim": _count(1, _W),
                   "patch_size": _count(1, LIMITS["patch"])}
_ADAPTOR_LIMITS = {"hidden_dim": _count(1, _W, True), "num_inner": _count(0, _D)}
_TOME_LIMITS = {"r": _count(0, LIMITS["tokens"]), "num_tokens": _count(1, LIMITS["tokens"], True)}


class StudentTokens(NamedTuple):
    """Raw student tokens. summary: (B, T, C) one per summary teacher; patches: (B, N, C); grid: (h, w)."""

    summary: Tensor
    patches: Tensor
    grid: tuple[int, int]


def nearest_valid_sizes(size: int, step: int) -> tuple[int, int]:
    lo = max(step, size // step * step)
    hi = -(-size // step) * step
    return lo, hi


class RADIOModel(nn.Module):
    """Student + adaptors. Input: float NCHW images in [0, 1], H and W multiples of `resolution_step`.

    Args:
        config: the model's architecture and teacher heads.
    """

    input_mean: Tensor
    input_std: Tensor
    # set by the loaders (radio.export.write / radio.export.read), absent on a freshly built model
    radio_teacher_specs: list[Any]
    radio_checkpoint_step: int
    provenance: dict[str, Any]
    export_defaults: dict[str, Any]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        names = [t.name for t in config.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        self.summary_teachers = [t.name for t in config.teachers if t.summary_dim]
        self.backbone = RADIOStudent(config.student, num_summary_tokens=len(self.summary_teachers))
        dim = self.backbone.embed_dim
        heads = [t for t in config.teachers if t.has_adaptor]
        self.adaptors = nn.ModuleDict(
            {t.name: TeacherAdaptor(dim, t.summary_dim, t.feature_dim, config.adaptor) for t in heads})
        self.normalizers = nn.ModuleDict({t.name: build_normalizer(t.normalizer, t.feature_dim) for t in heads})
        mean = torch.tensor(config.student.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(config.student.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)
        self.set_token_merging(**dataclasses.asdict(config.tome))

    @property
    def resolution_step(self) -> int:
        return self.config.student.patch_size

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def summary_dim(self) -> int:
        return self.backbone.embed_dim * self.backbone.num_summary_tokens

    def teacher_names(self) -> list[str]:
        return [t.name for t in self.config.teachers]

    def _check_input(self, x: Tensor) -> Tensor:
        """The images as floats in [0, 1] (uint8 0-255 converted, other integer dtypes refused), shape checked."""
        x = float_images(x, "student")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        step = self.resolution_step
        h, w = x.shape[-2:]
        bad = [(n, s) for n, s in (("height", h), ("width", w)) if s % step]
        if bad:
            hints = "; ".join(f"{n} {s} -> nearest valid {nearest_valid_sizes(s, step)}" for n, s in bad)
            raise ValueError(f"input size {h}x{w} is not a multiple of the resolution step {step}: {hints}")
        return x

    def forward_tokens(self, x: Tensor) -> StudentTokens:
        """Run the backbone on images in [0, 1]; returns summary tokens, patch tokens and the patch grid."""
        x = self._check_input(x)
        x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        tokens = self.backbone.forward_features(x)
        summary, patches = self.backbone.split_tokens(tokens)
        step = self.resolution_step
        return StudentTokens(summary, patches, (x.shape[-2] // step, x.shape[-1] // step))

    def adapt(self, name: str, tokens: StudentTokens, normalized: bool = False) -> AdaptorOutput:
        """Map student tokens into teacher `name`'s space.

        Args:
            normalized: if True return the normalized-space output (what the loss compares); otherwise map it back
                through the inverse normalizer into the teacher's own space.
        Returns:
            AdaptorOutput with summary (B, C_s) or None and features (B, N, C_t).
        """
        if name not in self.adaptors:
            dropped = " (it was dropped at export)" if name in self.teacher_names() else ""
            raise KeyError(f"unknown adaptor {name!r}{dropped}; this model has: {', '.join(self.adaptors) or 'none'}")
        head = cast(TeacherAdaptor, self.adaptors[name])
        summary = None
        if head.summary is not None:
            idx = self.summary_teachers.index(name)
            summary = head.summary(tokens.summary[:, idx])
        feats = head.features(tokens.patches)
        if not normalized:
            feats = cast(Normalizer, self.normalizers[name]).inverse(feats)
        return AdaptorOutput(summary, feats)

    @staticmethod
    def _fmt(features: Tensor, grid: tuple[int, int], feature_fmt: str) -> Tensor:
        if feature_fmt == "NLC":
            return features
        if feature_fmt == "NCHW":
            b, n, c = features.shape
            return features.transpose(1, 2).reshape(b, c, grid[0], grid[1])
        raise ValueError(f"feature_fmt must be 'NLC' or 'NCHW', got {feature_fmt!r}")

    # -- token merging ---------------------------------------------------------------------------------------
    def set_token_merging(self, r: int = 0, schedule: str = "constant", num_tokens: int | None = None) -> None:
        """Set the token-merging defaults (replacing all three; `set_token_merging()` turns merging off).

        Args:
            r: tokens merged per block at inference (ToMe, after attention, keys as metric, proportional
                attention); dense outputs are unmerged back to the full grid. Eval mode only: in training mode
                the student uses its own `train_merge_r`.
            schedule: "constant" or "decreasing" (radio.tome.merge_schedule).
            num_tokens: default output budget of `forward` (None: the full grid).
        The settings become `self.config.tome`, so `radio.export.save_model` carries them.
        """
        tome = TokenMergeConfig(r=r, schedule=schedule, num_tokens=num_tokens)
        self.backbone.set_merge_schedule(merge_schedule(len(self.backbone.blocks), tome.r, tome.schedule))
        self.config = dataclasses.replace(self.config, tome=tome)

    @staticmethod
    def output_merge(tokens: StudentTokens, num_tokens: int) -> tuple[Merge, Unmerge]:
        """Merge/unmerge that compress the patch grid to exactly `num_tokens` tokens (radio.tome).

        Matching uses the backbone's patch tokens; apply `merge` (or `radio.tome.merge_wavg`, which also gives
        the sizes) to the backbone's or any adaptor's (B, N, C) features.
        """
        return budget_soft_matching(tokens.patches, tokens.grid, num_tokens)

    def forward(self, x: Tensor, adaptors: Sequence[str] | None = None, feature_fmt: str = "NLC",
                num_tokens: int | None = None):
        """Backbone output, or a dict name -> AdaptorOutput in each teacher's space when `adaptors` is given.

        num_tokens: merge the patch features once, after the encoder, to exactly this many tokens (B, K, C),
            size-weighted, in the raster order of their anchors; None uses `config.tome.num_tokens` (default:
            the full grid). Needs feature_fmt="NLC".
        """
        tokens = self.forward_tokens(x)
        num_tokens = self.config.tome.num_tokens if num_tokens is None else num_tokens
        if num_tokens is None:
            def finish(f: Tensor) -> Tensor:
                return self._fmt(f, tokens.grid, feature_fmt)
        else:
            if feature_fmt != "NLC":
                raise ValueError(f"feature_fmt {feature_fmt!r} needs the full grid; output compression "
                                 f"(num_tokens={num_tokens}) returns 'NLC' only")
            merge, _ = self.output_merge(tokens, num_tokens)

            def finish(f: Tensor) -> Tensor:
                return merge_wavg(merge, f)[0]
        if adaptors is None:
            return StudentOutput(tokens.summary.flatten(1), finish(tokens.patches))
        out = {}
        for name in adaptors:
            a = self.adapt(name, tokens)
            out[name] = AdaptorOutput(a.summary, finish(a.features))
        return out

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None,
                              feature_fmt: str = "NLC", stop_early: bool = False) -> IntermediatesOutput:
        """Backbone outputs after selected blocks (e.g. for dense heads or VLMs that read several layers).

        Runs the plain backbone (timm `forward_intermediates`; the final norm is an identity, so the last block's
        entry equals `model(x)`), without token merging whatever `set_token_merging` says.

        Args:
            x: (B, 3, H, W) images in [0, 1], H and W multiples of `resolution_step`.
            indices: an int n takes the last n blocks; a sequence takes those blocks (negative indices count
                from the end); None takes every block.
            feature_fmt: "NLC" for (B, N, C) features or "NCHW" for (B, C, h, w).
            stop_early: stop after the last selected block; `final` is then None.
        Returns:
            IntermediatesOutput(intermediates, indices, final).
        """
        from timm.models._features import feature_take_indices

        x = self._check_input(x)
        if feature_fmt not in ("NLC", "NCHW"):
            raise ValueError(f"feature_fmt must be 'NLC' or 'NCHW', got {feature_fmt!r}")
        step = self.resolution_step
        grid = (x.shape[-2] // step, x.shape[-1] // step)
        x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        timm_indices = cast("int | list[int] | None", indices)  # timm accepts any sequence
        take, _ = feature_take_indices(len(self.backbone.blocks), timm_indices)
        out: Any = self.backbone.forward_intermediates(x, indices=timm_indices, return_prefix_tokens=True, output_fmt="NLC",
                                                  stop_early=stop_early, intermediates_only=stop_early)
        inter, final_tokens = (out, None) if stop_early else (out[1], out[0])
        n_sum = self.backbone.num_summary_tokens
        outputs = [StudentOutput(prefix[:, :n_sum].flatten(1), self._fmt(patches, grid, feature_fmt))
                   for patches, prefix in inter]
        final = None
        if final_tokens is not None:
            summary, patches = self.backbone.split_tokens(final_tokens)
            final = StudentOutput(summary.flatten(1), self._fmt(patches, grid, feature_fmt))
        return IntermediatesOutput(outputs, sorted({int(i) for i in take}), final)
