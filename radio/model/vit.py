"""The student: a timm VisionTransformer with cropped position embeddings, summary tokens and registers.

The prefix holds one summary (CLS) token per teacher with a summary target, followed by registers that pad the
prefix to a multiple of `register_multiple`. The final norm and the classifier head are identities.

References: AM-RADIO (Ranzinger et al., CVPR 2024); RADIOv2.5 (Heinrich et al., 2024); registers (Darcet et al.,
ICLR 2024).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from radio.model.cpe import CroppedPosEmbed
from radio.model.merging import MergingAttention, MergingBlock
from radio.ranges import (
    COUNT,
    NON_NEGATIVE_INT,
    OPTIONAL_COUNT,
    OPTIONAL_NON_NEGATIVE_INT,
    POSITIVE,
    PROBABILITY,
    Range,
    fields_errors,
    range_errors,
)
from radio.schema import SchemaError
from radio.tome import group_index, merge_errors, merge_schedule

# Registered sizes: width, depth, heads.
STUDENT_ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),
}


@dataclass
class StudentConfig:
    """The student's architecture, as a recipe states it.

    Args:
        arch: a registered size (vit_tiny, vit_small, vit_base, vit_large, vit_huge) or "custom".
        patch_size: student patch size in pixels; also the input resolution step.
        embed_dim: width (required for "custom", overrides a registered size otherwise).
        depth: number of blocks (as embed_dim).
        num_heads: attention heads (as embed_dim).
        mlp_ratio: MLP hidden width / embed_dim.
        num_registers: register tokens; None pads the prefix to a multiple of `register_multiple`.
        register_multiple: the prefix (summary tokens + registers) is padded to a multiple of this.
        max_resolution: largest input side in pixels; sets the size of the learned position grid.
        cpe_drop: probability of dropping the position embedding for a training sample.
        drop_path: stochastic depth rate.
        mean: input normalisation mean (the model takes images in [0, 1]).
        std: input normalisation std.
        train_merge_r: tokens merged per block while training (ToMe during training; 0 = off). Inference
            merging is set on the model (`RADIOModel.set_token_merging`, ModelConfig.tome), not here.
        train_merge_schedule: "constant" or "decreasing" (see radio.tome.merge_schedule).
    """

    arch: str = "vit_base"
    patch_size: int = 16
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    num_registers: int | None = None
    register_multiple: int = 8
    max_resolution: int = 2048
    cpe_drop: float = 0.1
    drop_path: float = 0.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    train_merge_r: int = 0
    train_merge_schedule: str = "constant"

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str = "model.student") -> list[str]:
        """Problems of the fields `values` (radio.schema), each naming its field under `where`: the ranges
        (`student_errors`), a registered or complete custom architecture, the training merge schedule."""
        errors = student_errors(values, where)
        if errors:
            return errors
        arch = values["arch"]
        if arch == "custom":
            missing = [k for k in ("embed_dim", "depth", "num_heads") if values[k] is None]
            if missing:
                errors.append(f"{where}.arch: 'custom' needs " + ", ".join(f"{where}.{k}" for k in missing))
        elif arch not in STUDENT_ARCHS:
            errors.append(f"{where}.arch: unknown architecture {arch!r}; valid: "
                          f"{', '.join(sorted(STUDENT_ARCHS))}, custom")
        return errors + merge_errors(values["train_merge_r"], values["train_merge_schedule"],
                                     f"{where}.train_merge_r", f"{where}.train_merge_schedule")

    def resolved(self) -> tuple[int, int, int]:
        """(embed_dim, depth, num_heads) after applying the registered size and overrides."""
        errors = self.check(vars(self), "student")
        if errors:
            raise SchemaError(errors)
        base = (0, 0, 0) if self.arch == "custom" else STUDENT_ARCHS[self.arch]
        dim = base[0] if self.embed_dim is None else self.embed_dim
        depth = base[1] if self.depth is None else self.depth
        heads = base[2] if self.num_heads is None else self.num_heads
        return dim, depth, heads

    def num_register_tokens(self, num_summary_tokens: int) -> int:
        if self.num_registers is not None:
            return self.num_registers
        if self.register_multiple <= 1:
            return 0
        m = self.register_multiple
        return (m - num_summary_tokens % m) % m


# Allowed values of the student's fields (None: the registered size's value, where the field is optional).
STUDENT_RANGES: dict[str, Range] = {
    "patch_size": COUNT, "embed_dim": OPTIONAL_COUNT, "depth": OPTIONAL_COUNT, "num_heads": OPTIONAL_COUNT,
    "mlp_ratio": POSITIVE, "num_registers": OPTIONAL_NON_NEGATIVE_INT, "register_multiple": NON_NEGATIVE_INT,
    "max_resolution": COUNT, "cpe_drop": PROBABILITY, "drop_path": Range(lo=0, hi=1, hi_open=True),
}  # train_merge_r / train_merge_schedule: radio.tome.merge_errors (in `StudentConfig.check`)


def student_errors(cfg: object, where: str = "model.student") -> list[str]:
    """Range problems of a student config (dataclass, mapping or Namespace), each naming its field: every value
    of STUDENT_RANGES, mean/std (three finite numbers, std > 0), max_resolution >= patch_size, and the heads
    dividing the width."""
    errors = fields_errors(where, cfg, STUDENT_RANGES)
    get = (lambda k: cfg.get(k) if isinstance(cfg, dict) else getattr(cfg, k, None))
    for key, rng in (("mean", Range()), ("std", POSITIVE)):
        values = get(key)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            errors.append(f"{where}.{key}: must be three numbers (R, G, B), got {values!r}")
            continue
        for i, v in enumerate(values):
            errors += range_errors(f"{where}.{key}[{i}]", v, rng)
    patch, max_res = get("patch_size"), get("max_resolution")
    if not errors and patch is not None and max_res is not None and max_res < patch:
        errors.append(f"{where}.max_resolution: must be >= {where}.patch_size ({patch}), got {max_res}")
    arch = get("arch")
    base = STUDENT_ARCHS.get(arch, (None, None, None)) if isinstance(arch, str) else (None, None, None)
    dim = base[0] if get("embed_dim") is None else get("embed_dim")
    heads = base[2] if get("num_heads") is None else get("num_heads")
    if COUNT.accepts(dim) and COUNT.accepts(heads) and cast(int, dim) % cast(int, heads):
        errors.append(f"{where}.num_heads: must divide {where}.embed_dim ({dim}), got {heads}")
    return errors


class MergedTokens(NamedTuple):
    """Backbone tokens after in-network token merging.

    tokens: (B, P + N', C), the P prefix tokens first (never merged); size: (B, P + N', 1) how many input
    tokens each stands for, or None when nothing merged; groups: (B, P + N) long, for every input position the
    index of the token it ended in.
    """

    tokens: Tensor
    size: Tensor | None
    groups: Tensor

    def unmerge(self) -> Tensor:
        """(B, P + N, C): every input position takes the value of its group."""
        c = self.tokens.shape[-1]
        return self.tokens.gather(1, self.groups[..., None].expand(-1, -1, c))


class RADIOStudent(VisionTransformer):
    """timm ViT with CPE, `num_summary_tokens` CLS tokens and registers in the prefix.

    Its blocks are `MergingBlock`s: with a merge schedule (per-block r) they merge tokens (ToMe) after
    attention; the dense output of `forward_features` is then unmerged back to the full grid. The schedule in
    use is `train_merge` (from the config) in training mode and `merge_r` (`set_merge_schedule`) in eval mode.

    Args:
        cfg: the student's architecture.
        num_summary_tokens: one per teacher with a summary target (at least 1).
    """

    reg_token: nn.Parameter  # reg_tokens > 0 always

    def __init__(self, cfg: StudentConfig, num_summary_tokens: int = 1) -> None:
        dim, depth, heads = cfg.resolved()
        num_summary_tokens = max(1, num_summary_tokens)
        num_regs = cfg.num_register_tokens(num_summary_tokens)
        max_grid = math.ceil(cfg.max_resolution / cfg.patch_size)
        super().__init__(
            img_size=min(cfg.max_resolution, 224 // cfg.patch_size * cfg.patch_size or cfg.patch_size),
            patch_size=cfg.patch_size, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=cfg.mlp_ratio,
            class_token=False, reg_tokens=num_summary_tokens + num_regs, pos_embed="none", no_embed_class=True,
            dynamic_img_size=True, global_pool="", num_classes=0, final_norm=False,
            drop_path_rate=cfg.drop_path, block_fn=MergingBlock, attn_layer=MergingAttention,
        )
        self.cfg = cfg
        self.num_summary_tokens = num_summary_tokens
        self.num_registers = num_regs
        self.cpe = CroppedPosEmbed(dim, max_grid, drop_prob=cfg.cpe_drop)
        self.train_merge = tuple(merge_schedule(depth, cfg.train_merge_r, cfg.train_merge_schedule))
        self.merge_r: tuple[int, ...] = (0,) * depth

    def set_merge_schedule(self, schedule: Sequence[int]) -> None:
        """Tokens to merge in each block at inference (eval mode); all zeros turns merging off."""
        schedule = tuple(int(r) for r in schedule)
        if len(schedule) != len(self.blocks) or min(schedule) < 0:
            raise ValueError(f"merge schedule needs {len(self.blocks)} values >= 0 (one per block), got {schedule}")
        self.merge_r = schedule

    def active_merge_schedule(self) -> tuple[int, ...]:
        return self.train_merge if self.training else self.merge_r

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def _pos_embed(self, x: Tensor) -> Tensor:
        # x: (B, H, W, C) from the dynamic-size patch embedding.
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c) + self.cpe(b, h, w).to(x.dtype)
        prefix = self.reg_token.expand(b, -1, -1)
        return self.pos_drop(torch.cat([prefix, x], dim=1))

    def forward_features(self, x: Tensor) -> Tensor:  # type: ignore[override]  # no attn_mask, is_causal
        """(B, P + N, C) tokens on the full grid; with an active merge schedule, merged then unmerged."""
        schedule = self.active_merge_schedule()
        if not any(schedule):
            return super().forward_features(x)
        return self.forward_merged(x, schedule).unmerge()

    def forward_merged(self, x: Tensor, schedule: Sequence[int] | None = None) -> MergedTokens:
        """Run the blocks with token merging; `schedule` defaults to the active one. x: (B, 3, H, W)."""
        schedule = self.active_merge_schedule() if schedule is None else tuple(schedule)
        if len(schedule) != len(self.blocks):
            raise ValueError(f"merge schedule needs {len(self.blocks)} values (one per block), got {schedule}")
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        b, n, _ = x.shape
        groups = torch.arange(n, device=x.device).expand(b, n)
        size = None
        for blk, r in zip(self.blocks, schedule):
            n_in = x.shape[1]
            x, size, unmerge = cast(MergingBlock, blk).forward_merging(x, size, r, self.num_prefix_tokens)
            if x.shape[1] != n_in:
                groups = group_index(unmerge, x.shape[1], b, x.device).gather(1, groups)
        return MergedTokens(self.norm(x), size, groups)

    def split_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Split (B, P + N, C) tokens into summary tokens (B, T, C) and patch tokens (B, N, C)."""
        return tokens[:, : self.num_summary_tokens], tokens[:, self.num_prefix_tokens:]
