"""The student: a timm VisionTransformer with cropped position embeddings, summary tokens and registers.

The prefix holds one summary (CLS) token per teacher with a summary target, followed by registers that pad the
prefix to a multiple of `register_multiple`. The final norm and the classifier head are identities.

References: AM-RADIO (Ranzinger et al., CVPR 2024); RADIOv2.5 (Heinrich et al., 2024); registers (Darcet et al.,
ICLR 2024).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from radio.model.cpe import CroppedPosEmbed

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
    """

    arch: str = "vit_base"
    patch_size: int = 16
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: float = 4.0
    num_registers: Optional[int] = None
    register_multiple: int = 8
    max_resolution: int = 2048
    cpe_drop: float = 0.1
    drop_path: float = 0.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def resolved(self) -> tuple[int, int, int]:
        """(embed_dim, depth, num_heads) after applying the registered size and overrides."""
        if self.arch == "custom":
            missing = [k for k in ("embed_dim", "depth", "num_heads") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"student.arch 'custom' needs student.{', student.'.join(missing)}")
            base = (0, 0, 0)
        elif self.arch in STUDENT_ARCHS:
            base = STUDENT_ARCHS[self.arch]
        else:
            raise ValueError(f"unknown student.arch {self.arch!r}; valid: {', '.join(sorted(STUDENT_ARCHS))}, custom")
        dim = self.embed_dim or base[0]
        depth = self.depth or base[1]
        heads = self.num_heads or base[2]
        if dim % heads:
            raise ValueError(f"student.embed_dim {dim} is not divisible by student.num_heads {heads}")
        return dim, depth, heads

    def num_register_tokens(self, num_summary_tokens: int) -> int:
        if self.num_registers is not None:
            return self.num_registers
        if self.register_multiple <= 1:
            return 0
        m = self.register_multiple
        return (m - num_summary_tokens % m) % m


class RADIOStudent(VisionTransformer):
    """timm ViT with CPE, `num_summary_tokens` CLS tokens and registers in the prefix.

    Args:
        cfg: the student's architecture.
        num_summary_tokens: one per teacher with a summary target (at least 1).
    """

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
            drop_path_rate=cfg.drop_path,
        )
        self.cfg = cfg
        self.num_summary_tokens = num_summary_tokens
        self.num_registers = num_regs
        self.cpe = CroppedPosEmbed(dim, max_grid, drop_prob=cfg.cpe_drop)

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def _pos_embed(self, x: Tensor) -> Tensor:
        # x: (B, H, W, C) from the dynamic-size patch embedding.
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c) + self.cpe(b, h, w).to(x.dtype)
        prefix = self.reg_token.expand(b, -1, -1)
        return self.pos_drop(torch.cat([prefix, x], dim=1))

    def split_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Split (B, P + N, C) tokens into summary tokens (B, T, C) and patch tokens (B, N, C)."""
        return tokens[:, : self.num_summary_tokens], tokens[:, self.num_prefix_tokens:]
