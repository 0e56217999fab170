"""VLM probe (LLaVA-1.5 protocol): prompt layout, splicing, data validation, token budget, and real signal."""
import json

import pytest
import torch
from torch import nn

from eval.datasets import DatasetError
from eval.features import ModelSpecError, StudentEncoder, load_encoder
from eval.run import EvalOptions, run_eval
from eval.vlm import VLMConfig, VLMProbe, build_lm, vlm_probe
from eval.vlm_data import (
    IGNORE_LABEL,
    IMAGE_TOKEN,
    Conversation,
    PromptBuilder,
    read_llava_json,
    word_tokenizer,
)
from tests.eval.encoders import NoiseEncoder, PaletteEncoder
from tests.helpers import TINY_DINO

TURNS = [("<image>\nWhat colour are the objects?", "red"), ("How many objects are there?", "two")]


def _builder():
    return PromptBuilder(word_tokenizer([t for turn in TURNS for t in turn] + ["USER:", "ASSISTANT:"]))


def test_prompt_labels_only_the_answers_and_their_eos():
    b = _builder()
    tok = b.tok
    ids, labels = b.build(TURNS)
    assert ids[0] == tok.bos_token_id and ids.count(IMAGE_TOKEN) == 1 and len(ids) == len(labels)
    supervised = [i for i, lab in zip(ids, labels) if lab != IGNORE_LABEL]
    assert tok.decode(supervised) == "red </s> two </s>"
    assert all(lab in (IGNORE_LABEL, i) for i, lab in zip(ids, labels))
    prompt, _ = b.build(TURNS, answer_last=False)  # what the model answers from: ends at the last "ASSISTANT:"
    text = tok.decode([i for i in prompt if i != IMAGE_TOKEN])
    assert text.endswith("there ? ASSISTANT :") and text.count("red") == 1 and "two" not in text
    assert ids[:len(prompt)] == prompt  # the prompt is the training sequence up to the last answer


def test_embed_splices_projected_vision_tokens_and_pads_on_the_requested_side():
    b = _builder()
    lm, _ = build_lm("tiny", [Conversation("0", None, TURNS)], VLMConfig())
    probe = VLMProbe(5, lm).eval()
    vision = [torch.randn(3, 5), torch.randn(3, 5)]
    long_ids, long_labels = b.build(TURNS)
    short_ids, short_labels = b.build(TURNS[:1])
    emb, mask, labels = probe.embed([long_ids, short_ids], vision, [long_labels, short_labels])
    assert emb.shape[:2] == (2, len(long_ids) + 2) and mask[0].all() and mask[1].sum() == len(short_ids) + 2
    at = long_ids.index(IMAGE_TOKEN)
    with torch.no_grad():
        expected = probe.projector(probe.norm(vision[0]))
    assert torch.allclose(emb[0, at:at + 3], expected, atol=1e-6) and (labels[0, at:at + 3] == IGNORE_LABEL).all()
    assert torch.equal(emb[0, at + 3], lm.get_input_embeddings().weight[long_ids[at + 1]])
    left, lmask, _ = probe.embed([long_ids, short_ids], vision, pad_left=True)
    pad = len(long_ids) - len(short_ids)
    assert (lmask[1, :pad] == 0).all() and lmask[1, pad:].all() and torch.equal(left[1, pad:], emb[1, :-pad])


def test_llava_json_is_validated_naming_the_file(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    good = [{"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "Colour?"},
                                                            {"from": "gpt", "value": "red"}]}]
    (tmp_path / "train.json").write_text(json.dumps(good))
    conv = read_llava_json(tmp_path / "train.json")
    assert conv[0].turns[0][0].startswith("<image>") and conv[0].image == tmp_path / "a.png"
    (tmp_path / "bad.json").write_text(json.dumps([dict(good[0], image="missing.png")]))
    with pytest.raises(DatasetError, match="missing.png: image of .*bad.json\\[0\\] is missing"):
        read_llava_json(tmp_path / "bad.json")
    turns = [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]
    (tmp_path / "roles.json").write_text(json.dumps([dict(good[0], conversations=turns)]))
    with pytest.raises(DatasetError, match="roles.json\\[0\\]: turn 0 must be from 'human' then 'gpt'"):
        read_llava_json(tmp_path / "roles.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DatasetError, match="empty.json: empty split"):
        read_llava_json(tmp_path / "empty.json")


class _Budgeted(nn.Module):
    """Stand-in for a student whose forward takes `num_tokens` (token merging): keeps the first n tokens."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []
        self.resolution_step, self.provenance = inner.resolution_step, {}

    def forward(self, x, adaptors=None, feature_fmt="NLC", num_tokens=None):
        self.calls.append(num_tokens)
        out = self.inner(x, adaptors=adaptors, feature_fmt=feature_fmt)
        return out if num_tokens is None else out._replace(features=out.features[:, :num_tokens])


class _NoBudget(nn.Module):
    def forward(self, x, adaptors=None, feature_fmt="NLC"):
        raise AssertionError("never called")


def test_num_tokens_reaches_the_student_only_when_given(tiny_export):
    import radio

    model = _Budgeted(radio.load(tiny_export))
    x = torch.rand(2, 3, 64, 64)
    assert StudentEncoder(model).encode_tokens(x).shape[1] == 16 and model.calls == [None]
    assert StudentEncoder(model, num_tokens=5).encode_tokens(x).shape[1] == 5 and model.calls[-1] == 5
    with pytest.raises(ModelSpecError, match="does not accept num_tokens"):
        StudentEncoder(_NoBudget(), name="old-student", num_tokens=5)
    teacher = load_encoder(TINY_DINO)
    with pytest.raises(ValueError, match="applies to radio students only"):
        vlm_probe(teacher, [], [], VLMConfig(num_tokens=4))


def test_a_local_transformers_lm_loads_by_path_and_learns(tmp_path, synth_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from eval.datasets import open_dataset
    from eval.vlm_data import conversation_texts, write_synth_vqa

    convs = read_llava_json(write_synth_vqa(open_dataset(synth_dir).val, tmp_path / "qa", limit=6))
    tok = word_tokenizer(conversation_texts(convs))
    cfg = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.1,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)  # the LM is randomly initialised: fix it so the threshold is not a coin toss
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    lm, _ = build_lm(str(tmp_path / "lm"), convs, VLMConfig())
    assert isinstance(lm, GPT2LMHeadModel)
    cfg = VLMConfig(lm=str(tmp_path / "lm"), resolution=32, stage2_epochs=30, stage2_lr=3e-3, batch_size=8)
    r = vlm_probe(PaletteEncoder(patch=8), convs, convs, cfg, progress=False)  # memorise 24 answers
    assert r["config"]["stage2_lr"] == 3e-3 and r["stage2"]["exact_match"] > r["majority_baseline"] + 0.15
    with pytest.raises(FileNotFoundError, match="could not load a transformers causal LM"):
        build_lm(str(tmp_path / "nowhere"), convs, VLMConfig())


@pytest.mark.slow
def test_vlm_on_synth_beats_the_blind_baseline_and_ranks_label_features_above_noise(synth_dir, tmp_path):
    vlm = VLMConfig(stage2_epochs=8, stage2_lr=3e-3, batch_size=32)
    opts = EvalOptions(resolution=64, progress=False, vlm=vlm, pca_images=0)
    report = run_eval(["vlm"], [], str(synth_dir), tmp_path, opts,
                      encoders=[PaletteEncoder(patch=16), NoiseEncoder(patch=16)])
    good = report["probes"]["vlm"]["palette-test-encoder"]["qa"]
    noise = report["probes"]["vlm"]["noise-test-encoder"]["qa"]
    assert good["vision_tokens"] == 16 and good["num_test"] == 4 * 48  # four questions per val image
    assert good["exact_match"] > good["majority_baseline"] + 0.1  # stage 2 with the tiny random LM
    assert good["exact_match"] > noise["exact_match"] + 0.1
    assert good["per_question"]["what colour are the objects"] > 0.6
    assert 0.0 <= good["stage1"]["exact_match"] <= 1.0 and good["final_stage"] == "stage2"
    md = (tmp_path / "report.md").read_text()
    assert f"{good['stage1']['exact_match']:.4f} -> {good['exact_match']:.4f}" in md
    assert (tmp_path / "vlm_curves.png").stat().st_size > 10_000
