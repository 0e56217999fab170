"""Token merging inside the student (ToMe blocks) and output compression on RADIOModel, export included."""
import inspect
import json

import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block

from radio.export import load, save_model
from radio.model import ModelConfig, RADIOModel, StudentConfig, TeacherHead
from radio.model.merging import MergingAttention, MergingBlock
from radio.tome import TokenMergeConfig, group_index, merge_schedule, tokens_per_layer

TINY = dict(arch="custom", embed_dim=32, depth=4, num_heads=2, patch_size=8, max_resolution=128,
            register_multiple=4)
HEADS = [TeacherHead("a", 16, 24), TeacherHead("b", None, 12), TeacherHead("c", 8, 8)]


def _model(**student) -> RADIOModel:
    torch.manual_seed(0)
    return RADIOModel(ModelConfig(StudentConfig(**{**TINY, **student}), list(HEADS))).eval()


def test_blocks_are_timm_blocks_with_the_same_weights_and_forward():
    m = _model()
    blk = m.backbone.blocks[0]
    assert isinstance(blk, MergingBlock) and isinstance(blk, Block) and isinstance(blk.attn, MergingAttention)
    plain = Block(32, 2, qkv_bias=True)
    assert set(plain.state_dict()) == set(blk.state_dict())
    x = torch.randn(2, 9, 32)
    step = blk.forward_merging(x, None, 0, protected=4)
    assert torch.equal(step.x, blk(x)) and step.size is None  # r = 0 is the plain block, bit for bit


def test_r_zero_gives_outputs_identical_to_no_merging():
    m = _model()
    x = torch.rand(2, 3, 48, 40)
    ref = m(x, adaptors=["a", "b"])
    m.set_token_merging(r=0, schedule="decreasing")
    out = m(x, adaptors=["a", "b"])
    for n in ("a", "b"):
        assert torch.equal(out[n].features, ref[n].features)
    xn = (x - m.input_mean) / m.input_std  # the merging path itself, run with r = 0 in every block
    assert torch.equal(m.backbone.forward_merged(xn, [0] * 4).unmerge(), m.backbone.forward_features(xn))


_ATTN_FLAGS = [f for f in ("qk_norm", "scale_norm", "gated") if f in inspect.signature(Attention).parameters]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("flags", [(), *[(f,) for f in _ATTN_FLAGS], tuple(_ATTN_FLAGS)],
                         ids=lambda f: "+".join(f) or "plain")
def test_forward_with_metric_copies_the_installed_timm_attention_forward(fused, flags):
    """forward_with_metric re-implements timm's Attention.forward; with size=None it must equal it bit for bit,
    so a timm release whose forward diverges fails here (installed timm: see the test id / timm.__version__)."""
    assert {"qk_norm", "gated"} <= set(_ATTN_FLAGS), f"timm {timm.__version__} lacks a flag merging.py uses"
    torch.manual_seed(0)
    kw = {f: True for f in flags}
    if {"qk_norm", "scale_norm"} & set(flags):
        kw["norm_layer"] = torch.nn.LayerNorm
    attn = MergingAttention(24, num_heads=3, qkv_bias=True, **kw).eval()
    for p in attn.parameters():  # norms and biases away from their identity initialisation
        torch.nn.init.normal_(p, std=0.5)
    attn.fused_attn = fused
    x = torch.randn(2, 7, 24)
    out, metric = attn.forward_with_metric(x)
    assert torch.equal(out, Attention.forward(attn, x))
    assert metric.shape == (2, 7, 8)


def test_proportional_attention_treats_a_token_of_size_2_as_two_copies():
    torch.manual_seed(0)
    attn = MergingAttention(16, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(1, 5, 16)
    dup = torch.cat([x, x[:, 2:3]], dim=1)  # token 2 twice
    out_dup, _ = attn.forward_with_metric(dup)
    size = torch.ones(1, 5, 1)
    size[0, 2] = 2
    out, metric = attn.forward_with_metric(x, size)
    assert torch.allclose(out, out_dup[:, :5], atol=1e-6)
    assert metric.shape == (1, 5, 8)
    attn.fused_attn = False  # the explicit-softmax path agrees
    assert torch.allclose(attn.forward_with_metric(x, size)[0], out, atol=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "decreasing"])
def test_in_network_merging_shrinks_tokens_and_unmerges_to_the_grid(schedule):
    m = _model()
    x = torch.rand(2, 3, 64, 56)  # 8 x 7 grid, 56 patches, prefix 4 (2 summary tokens + 2 registers)
    ref = m(x, adaptors=["a", "b", "c"])
    m.set_token_merging(r=6, schedule=schedule)
    assert m.backbone.merge_r == tuple(merge_schedule(4, 6, schedule))
    xn = (x - m.input_mean) / m.input_std
    merged = m.backbone.forward_merged(xn)
    p = m.backbone.num_prefix_tokens
    assert merged.tokens.shape[1] == tokens_per_layer(p + 56, m.backbone.merge_r, p)[-1]
    assert torch.equal(merged.size[:, :p], torch.ones(2, p, 1)) and (merged.size.sum(1) == p + 56).all()
    assert torch.equal(merged.groups[:, :p], torch.arange(p).expand(2, p))  # summary tokens stay in front
    out = m(x, adaptors=["a", "b", "c"])
    nchw = m(x, feature_fmt="NCHW")
    assert nchw.features.shape == (2, 32, 8, 7) and out["c"].features.shape == (2, 56, 8)
    assert out["a"].summary.shape == (2, 16) and out["b"].summary is None
    # merged positions share their group's value on the grid
    feats, groups = m(x).features, merged.groups[:, p:] - p
    for i in range(2):
        for g in groups[i].unique():
            same = feats[i][groups[i] == g]
            assert torch.equal(same, same[:1].expand_as(same))
    # and merging changes the answer only a little (same weights, most tokens intact)
    err = (out["a"].features - ref["a"].features).pow(2).mean() / ref["a"].features.var()
    assert 0 < err < 0.5


def test_output_budget_on_the_model_and_its_errors():
    m = _model()
    x = torch.rand(2, 3, 48, 64)  # 6 x 8 = 48 patches
    full = m(x, adaptors=["a"])["a"].features
    for k in (1, 7, 20, 48):
        out = m(x, num_tokens=k)
        assert out.features.shape == (2, k, 32) and out.summary.shape == (2, 64)
        ad = m(x, adaptors=["a", "b"], num_tokens=k)
        assert ad["a"].features.shape == (2, k, 24) and ad["b"].features.shape == (2, k, 12)
    tokens = m.forward_tokens(x)
    merge, unmerge = m.output_merge(tokens, 20)
    from radio.tome import merge_wavg
    y, size = merge_wavg(merge, full)
    assert torch.allclose((y * size).sum(1), full.sum(1), atol=1e-4) and (size.sum(1) == 48).all()
    assert torch.allclose(y, m(x, adaptors=["a"], num_tokens=20)["a"].features)
    g = group_index(unmerge, 20, 2)
    assert torch.equal(unmerge(y), y.gather(1, g[..., None].expand(-1, -1, 24)))
    assert torch.equal(m(x, num_tokens=48).features, m(x).features)  # a budget of N is the identity
    with pytest.raises(ValueError, match=r"num_tokens must be in \[1, 48\] for a 6x8 grid, got 49"):
        m(x, num_tokens=49)
    with pytest.raises(ValueError, match="feature_fmt 'NCHW' needs the full grid"):
        m(x, num_tokens=8, feature_fmt="NCHW")


def test_merge_settings_travel_through_config_and_export(tmp_path):
    m = _model()
    m.set_token_merging(r=3, schedule="decreasing", num_tokens=16)
    assert m.config.tome == TokenMergeConfig(3, "decreasing", 16)
    x = torch.rand(1, 3, 64, 64)
    before = m(x, adaptors=["a"])["a"]
    assert before.features.shape == (1, 16, 24)  # the default budget applies without an argument
    out = save_model(m, tmp_path / "student")
    assert json.loads((out / "config.json").read_text())["tome"] == {"r": 3, "schedule": "decreasing",
                                                                      "num_tokens": 16}
    assert "default output-token budget: 16" in (out / "README.md").read_text()
    loaded = load(out)
    assert loaded.backbone.merge_r == m.backbone.merge_r
    assert torch.equal(loaded(x, adaptors=["a"])["a"].features, before.features)
    assert loaded(x, num_tokens=64).features.shape == (1, 64, 32)
    loaded.set_token_merging()  # everything off: the full, unmerged grid
    assert loaded(x).features.shape == (1, 64, 32) and not any(loaded.backbone.merge_r)


def test_config_without_tome_loads_and_bad_tome_keys_are_rejected():
    d = _model().config.to_dict()
    d.pop("tome")
    assert ModelConfig.from_dict(d).tome == TokenMergeConfig()
    d["tome"] = {"r": 2, "ratio": 0.5}
    with pytest.raises(ValueError, match=r"x.json: tome: unknown key\(s\) \['ratio'\]"):
        ModelConfig.from_dict(d, "x.json")
    d["tome"] = {"schedule": "cosine"}
    with pytest.raises(ValueError, match="x.json: tome.schedule: must be one of constant, decreasing, got"):
        ModelConfig.from_dict(d, "x.json")
    with pytest.raises(ValueError, match="student.train_merge_r: must be an integer >= 0, got -2"):
        StudentConfig(**TINY, train_merge_r=-2).resolved()


def test_training_mode_merges_with_the_students_own_schedule_and_trains():
    m = _model(train_merge_r=5, cpe_drop=0.0)
    assert m.backbone.train_merge == (5, 5, 5, 5) and not any(m.backbone.merge_r)
    x = torch.rand(2, 3, 64, 64)
    xn = (x - m.input_mean) / m.input_std
    m.train()
    merged = m.backbone.forward_merged(xn)
    assert merged.tokens.shape[1] == 4 + 64 - 20
    out = m(x, adaptors=["a", "c"])
    assert out["a"].features.shape == (2, 64, 24)  # unmerged to the grid for the dense losses
    loss = out["a"].features.pow(2).mean() + out["a"].summary.pow(2).mean() + out["c"].features.pow(2).mean()
    loss.backward()
    grads = [p.grad for n, p in m.backbone.named_parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    m.eval()  # eval mode uses the inference settings (off): no merging
    assert m.backbone.forward_merged(xn, m.backbone.active_merge_schedule()).tokens.shape[1] == 68
