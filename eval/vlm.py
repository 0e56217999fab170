"""VLM backbone probe, LLaVA-1.5 protocol: a frozen vision tower, an MLP projector into a causal LM.

The tower's output tokens (cached once; frozen) go through an optional non-affine LayerNorm (feature scale matters:
RADIO issue #15) and the projector Linear -> GELU -> Linear into the LM's embedding space, spliced in where the
prompt says `<image>`. Stage 1 trains the projector only (lr 1e-3); stage 2 trains projector + LM (lr 2e-5 for a
pretrained LM). Answers are generated greedily and scored by exact match against the gold answers; the blind
baseline answers every question with its most frequent training answer.

The LM is any transformers causal LM (a local directory or a hub id; never `trust_remote_code`), or `tiny`: a
2-layer Llama of width 64, randomly initialised, over a word-level vocabulary built from the training set. A tiny
random LM has no language yet, so stage 1 alone leaves it near the blind baseline; stage 2 is where it learns.

References: LLaVA-1.5 (Liu et al., 2023); RADIOv2.5 (Heinrich et al., 2024) VLM evaluation and token budget.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eval.features import Encoder, StudentEncoder
from eval.vlm_data import (
    IGNORE_LABEL,
    IMAGE_TOKEN,
    Conversation,
    PromptBuilder,
    conversation_texts,
    majority_answers,
    normalize_answer,
    question_key,
    word_tokenizer,
)


@dataclass
class VLMConfig:
    """Options of the VLM probe.

    Args:
        lm: "tiny" (random 2-layer Llama, word-level vocabulary) or a transformers causal LM (path or hub id).
        resolution: image side the tower sees (snapped to its patch size; fixed-size teachers use their own).
        num_tokens: output token budget passed to a student as `num_tokens=` (token merging); None = all tokens.
        stage1_epochs, stage1_lr: projector-only training (LLaVA: 1 epoch, lr 1e-3).
        stage2_epochs, stage2_lr: projector + LM training; 0 epochs skips it. None: LLaVA's 1 epoch at 2e-5 for a
            pretrained LM; 8 epochs at 3e-3 for `tiny`, which learns its language from scratch.
        batch_size: conversations per step. warmup: fraction of steps with a linear warm-up (LLaVA: 0.03).
        pre_norm: non-affine LayerNorm on the vision tokens before the projector.
        max_new_tokens: greedy decoding budget per answer. system: optional system prompt.
        tiny_width, tiny_layers: size of the `tiny` LM. seed: initialisation and shuffling.
    """

    lm: str = "tiny"
    resolution: int = 224
    num_tokens: int | None = None
    stage1_epochs: int = 1
    stage1_lr: float = 1e-3
    stage2_epochs: int | None = None
    stage2_lr: float | None = None
    batch_size: int = 32
    warmup: float = 0.03
    pre_norm: bool = True
    max_new_tokens: int = 8
    system: str = ""
    tiny_width: int = 64
    tiny_layers: int = 2
    seed: int = 0


def resolve_config(cfg: VLMConfig) -> VLMConfig:
    """Fill the stage-2 defaults that depend on the LM (see VLMConfig)."""
    tiny = cfg.lm == "tiny"
    epochs = cfg.stage2_epochs if cfg.stage2_epochs is not None else (8 if tiny else 1)
    lr = cfg.stage2_lr if cfg.stage2_lr is not None else (3e-3 if tiny else 2e-5)
    return replace(cfg, stage2_epochs=epochs, stage2_lr=lr)


def build_lm(spec: str, train: Sequence[Conversation], cfg: VLMConfig):
    """(causal LM, tokenizer). `tiny` builds a seeded random Llama; anything else loads with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if spec == "tiny":
        tok = word_tokenizer(conversation_texts(train) + [cfg.system])
        w = cfg.tiny_width
        lm_cfg = LlamaConfig(vocab_size=len(tok), hidden_size=w, intermediate_size=4 * w,
                             num_hidden_layers=cfg.tiny_layers, num_attention_heads=max(1, w // 16),
                             num_key_value_heads=max(1, w // 16), max_position_embeddings=4096,
                             initializer_range=0.1,  # a from-scratch LM this small learns faster from a wider init
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return LlamaForCausalLM(lm_cfg), tok
    try:
        tok = AutoTokenizer.from_pretrained(spec)
        lm = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
    except Exception as e:
        raise FileNotFoundError(f"--lm {spec!r}: could not load a transformers causal LM ({type(e).__name__}: "
                                f"{e}). Offline? Pass a local directory holding the model and its tokenizer, "
                                f"or `tiny`") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok


class VLMProbe(nn.Module):
    """Projector + LM over cached vision tokens. vision tokens: (T, C) per image; LM embedding width D."""

    def __init__(self, vision_dim: int, lm: Any, pre_norm: bool = True) -> None:  # a transformers causal LM
        super().__init__()
        dim = lm.get_input_embeddings().embedding_dim
        self.norm = nn.LayerNorm(vision_dim, elementwise_affine=False) if pre_norm else nn.Identity()
        self.projector = nn.Sequential(nn.Linear(vision_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.lm = lm

    def embed(self, seqs: Sequence[list[int]], vision: Sequence[Tensor], labels: Sequence[list[int]] | None = None,
              pad_left: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Splice projected vision tokens at IMAGE_TOKEN. Returns inputs_embeds (B, L, D), attention_mask (B, L)
        and labels (B, L) with IGNORE_LABEL on image tokens and padding (None when no labels were given)."""
        table = self.lm.get_input_embeddings()
        device = table.weight.device
        t = vision[0].shape[0]
        lengths = [len(ids) + (t - 1) * sum(1 for i in ids if i == IMAGE_TOKEN) for ids in seqs]
        length = max(lengths)
        ids_t = torch.zeros(len(seqs), length, dtype=torch.long)
        is_img = torch.zeros(len(seqs), length, dtype=torch.bool)
        mask = torch.zeros(len(seqs), length, dtype=torch.long)
        lab_t = torch.full((len(seqs), length), IGNORE_LABEL, dtype=torch.long)
        images = []
        for b, ids in enumerate(seqs):
            pos = length - lengths[b] if pad_left else 0
            mask[b, pos:pos + lengths[b]] = 1
            for k, tok in enumerate(ids):
                if tok == IMAGE_TOKEN:
                    is_img[b, pos:pos + t] = True
                    images.append(vision[b])
                    pos += t
                else:
                    ids_t[b, pos] = tok
                    if labels is not None:
                        lab_t[b, pos] = labels[b][k]
                    pos += 1
        emb = table(ids_t.to(device))
        if images:
            img = self.projector(self.norm(torch.stack(images).to(device=device, dtype=torch.float32)))
            emb = emb.masked_scatter(is_img.to(device)[..., None], img.to(emb.dtype))
        return emb, mask.to(device), (lab_t.to(device) if labels is not None else None)

    def forward(self, seqs, vision, labels) -> Tensor:
        emb, mask, lab = self.embed(seqs, vision, labels)
        return self.lm(inputs_embeds=emb, attention_mask=mask, labels=lab).loss


@torch.no_grad()
def encode_images(encoder: Encoder, paths: Sequence[Path], resolution: int, batch_size: int = 32,
                  device: str | torch.device = "cpu", progress: bool = True) -> Tensor:
    """Frozen vision tokens (M, T, C) float16 of the images at `paths` (resized, centre-cropped)."""
    from eval.datasets import open_image
    from radio.data.transforms import eval_transform

    tf = eval_transform(encoder.input_size(resolution))
    encoder.to(device)
    out = []
    it = range(0, len(paths), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"vision tokens {encoder.name}", unit="batch", leave=False)
    for i in it:
        x = torch.stack([tf(open_image(p)) for p in paths[i:i + batch_size]]).to(device)
        out.append(encoder.encode_tokens(x).half().cpu())
    return torch.cat(out)


def _train(probe: VLMProbe, items: list[tuple[list[int], list[int], int]], feats: Tensor, params, lr: float,
           epochs: int, cfg: VLMConfig, device, progress: bool) -> list[float]:
    """Optimise `params` on (ids, labels, image index) items; returns the loss per step."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(items) / cfg.batch_size)
    warm = max(1, int(cfg.warmup * steps))

    def lr_at(s: int) -> float:  # linear warm-up, then cosine to 0
        return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="vlm training", unit="step", leave=False)
    probe.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(items), generator=gen).split(cfg.batch_size):
            batch = [items[i] for i in idx.tolist()]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=feats.is_cuda):  # never bf16 on the CPU
                loss = probe([b[0] for b in batch], [feats[b[2]] for b in batch], [b[1] for b in batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    probe.eval()
    return losses


@torch.no_grad()
def answer(probe: VLMProbe, builder: PromptBuilder, prompts: list[tuple[list[tuple[str, str]], int]], feats: Tensor,
           cfg: VLMConfig, batch_size: int = 64) -> list[str]:
    """Greedy answers to prompts = (turns whose last answer is to be generated, image index)."""
    from transformers import GenerationConfig

    tok = builder.tok
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    probe.eval()
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        seqs = [builder.build(turns, answer_last=False)[0] for turns, _ in chunk]
        emb, mask, _ = probe.embed(seqs, [feats[j] for _, j in chunk], pad_left=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=emb.is_cuda):
            gen = probe.lm.generate(inputs_embeds=emb, attention_mask=mask, generation_config=gen_cfg)
        out += tok.batch_decode(gen, skip_special_tokens=True)
    return out


def evaluate(probe, builder, convs: Sequence[Conversation], image_index: dict[Path, int], feats: Tensor,
             cfg: VLMConfig) -> dict[str, Any]:
    """Exact match over every answer turn (earlier turns given with their gold answers), overall and per question."""
    prompts, golds, keys = [], [], []
    for c in convs:
        for k in range(len(c.turns)):
            prompts.append((c.turns[:k + 1], image_index[c.image]))
            golds.append(c.turns[k][1])
            keys.append(question_key(c.turns[k][0]))
    preds = answer(probe, builder, prompts, feats, cfg)
    hits = [normalize_answer(p) == normalize_answer(g) for p, g in zip(preds, golds)]
    per_q: dict[str, list[bool]] = {}
    for key, h in zip(keys, hits):
        per_q.setdefault(key, []).append(h)
    res = {"exact_match": sum(hits) / len(hits), "num_questions": len(hits),
           "examples": [{"question": q[0][-1][0], "gold": g, "prediction": p}
                        for q, g, p in list(zip(prompts, golds, preds))[:8]]}
    if len(per_q) <= 20:
        res["per_question"] = {k: sum(v) / len(v) for k, v in per_q.items()}
    return res


def majority_baseline(train: Sequence[Conversation], val: Sequence[Conversation]) -> dict[str, Any]:
    """Blind baseline: each question answered with its most frequent training answer (overall majority if unseen)."""
    per_q, overall = majority_answers(train)
    hits: dict[str, list[bool]] = {}
    for c in val:
        for q, a in c.turns:
            k = question_key(q)
            hits.setdefault(k, []).append(per_q.get(k, overall) == normalize_answer(a))
    flat = [h for v in hits.values() for h in v]
    out: dict[str, Any] = {"exact_match": sum(flat) / len(flat)}
    if len(hits) <= 20:
        out["per_question"] = {k: sum(v) / len(v) for k, v in hits.items()}
    return out


def vlm_probe(encoder: Encoder, train: Sequence[Conversation], val: Sequence[Conversation],
              cfg: VLMConfig | None = None, device: str | torch.device = "cpu",
              progress: bool = True) -> dict[str, Any]:
    """Train and score the LLaVA-style probe with `encoder` as the frozen vision tower (see module docstring)."""
    cfg = resolve_config(cfg or VLMConfig())
    if cfg.num_tokens is not None:
        if not isinstance(encoder, StudentEncoder):
            raise ValueError(f"{encoder.name}: --num-tokens (token budget) applies to radio students only")
        encoder.set_num_tokens(cfg.num_tokens)
    images = sorted({c.image for c in [*train, *val]})
    index = {p: i for i, p in enumerate(images)}
    feats = encode_images(encoder, images, cfg.resolution, device=device, progress=progress)
    lm, tok = build_lm(cfg.lm, train, cfg)
    builder = PromptBuilder(tok, cfg.system)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        probe = VLMProbe(feats.shape[-1], lm, cfg.pre_norm).to(device)
    items = []
    for c in train:  # every answer turn is a training target, as in LLaVA's multi-turn data
        ids, labels = builder.build(c.turns)
        items.append((ids, labels, index[c.image]))
    feats = feats.to(device)
    lm.requires_grad_(False)
    curves = {"stage1": _train(probe, items, feats, list(probe.projector.parameters()), cfg.stage1_lr,
                               cfg.stage1_epochs, cfg, device, progress)}
    result: dict[str, Any] = {"stage1": evaluate(probe, builder, val, index, feats, cfg)}
    if cfg.stage2_epochs > 0:  # type: ignore[operator]  # resolve_config set stage2_epochs and stage2_lr
        lm.requires_grad_(True)
        curves["stage2"] = _train(probe, items, feats, [p for p in probe.parameters() if p.requires_grad],
                                  cfg.stage2_lr, cfg.stage2_epochs,  # type: ignore[arg-type]
                                  cfg, device, progress)
        result["stage2"] = evaluate(probe, builder, val, index, feats, cfg)
    final = result.get("stage2", result["stage1"])
    blind = majority_baseline(train, val)
    return {
        "exact_match": final["exact_match"], "final_stage": "stage2" if "stage2" in result else "stage1",
        "per_question": final.get("per_question"),
        **result, "majority_baseline": blind["exact_match"], "majority_per_question": blind.get("per_question"),
        "vision_tokens": int(feats.shape[1]), "vision_dim": int(feats.shape[2]),
        "num_train": len(train), "num_test": final["num_questions"], "loss_curves": curves,
        "config": asdict(cfg),
    }
