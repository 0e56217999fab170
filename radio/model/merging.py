"""The student's transformer block with token merging (ToMe) between attention and MLP.

`MergingBlock` is a timm `Block` (same submodules, same state-dict keys, same `forward`) with one more entry
point, `forward_merging`, that also takes and returns token sizes: attention with proportional attention
(log size added to the logits), then bipartite soft matching on the keys averaged over heads, a size-weighted
merge of r tokens, then the MLP. The student chooses the blocks at construction (timm's `block_fn` /
`attn_layer`); nothing is patched at run time.

References: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023.
"""
from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import Tensor

from radio.tome import Unmerge, bipartite_soft_matching, clamp_r, merge_wavg


class MergeStep(NamedTuple):
    """One block's output under merging.

    x: (B, N', C) tokens; size: (B, N', 1) tokens each stands for, or None while nothing has merged;
    unmerge: maps (B, N', *) back to the block's (B, N, *) input positions.
    """

    x: Tensor
    size: Tensor | None
    unmerge: Unmerge


class MergingAttention(Attention):
    """timm Attention that can add log(size) to the logits and return its keys as a merge metric.

    `forward_with_metric` follows timm's `Attention.forward` (timm >= 1.0.28: `attn_dim`, `gate`); a test pins
    the two bit for bit against the installed timm (size=None, fused and explicit paths, qk_norm/gate).
    """

    def forward_with_metric(self, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Self-attention with proportional attention.

        Args:
            x: (B, N, C) normalized tokens.
            size: (B, N, 1) token sizes, or None (all ones: plain attention, bit-identical to `forward`).
        Returns:
            (out (B, N, C), metric (B, N, head_dim): the keys averaged over heads).
        """
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = None if size is None else size.log().view(b, 1, 1, n).to(q.dtype)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x)), k.mean(dim=1)


class MergingBlock(Block):
    """timm pre-norm Block; `forward_merging` merges r tokens after attention and before the MLP.

    Build it through timm with `block_fn=MergingBlock, attn_layer=MergingAttention`.
    """

    attn: MergingAttention

    def forward_merging(self, x: Tensor, size: Tensor | None, r: int, protected: int) -> MergeStep:
        """Attention (proportional to `size`), merge r tokens (the first `protected` never merge), MLP.

        Args:
            x: (B, N, C) tokens; size: (B, N, 1) or None; r: tokens to merge (clamped to what can merge);
            protected: prefix tokens (summary tokens, registers) that stay as they are.
        Returns:
            MergeStep with x (B, N - r, C).
        """
        y, metric = self.attn.forward_with_metric(self.norm1(x), size)
        x = x + self.drop_path1(self.ls1(y))
        merge, unmerge = bipartite_soft_matching(metric, r, protected)
        if clamp_r(x.shape[1], r, protected) > 0:
            x, size = merge_wavg(merge, x, size)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return MergeStep(x, size, unmerge)
