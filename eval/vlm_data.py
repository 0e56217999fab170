"""Data for the VLM probe: LLaVA's JSON conversation format, a question/answer set generated from the synth labels,
a word-level tokenizer for a tiny LM, and the LLaVA-1.5 ("v1") prompt layout with answer-only labels.

LLaVA JSON: a list of {"id": str, "image": path relative to the image folder, "conversations": [{"from": "human",
"value": "<image>\\nQuestion?"}, {"from": "gpt", "value": "answer"}, ...]}; turns alternate human / gpt.

References: LLaVA-1.5 (Liu et al., 2023), data format and conversation template.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.datasets import DatasetError, Split

IMAGE_MARK = "<image>"
IMAGE_TOKEN = -200  # placeholder id where the projected vision tokens go (LLaVA's IMAGE_TOKEN_INDEX)
IGNORE_LABEL = -100
SYNTH_QUESTIONS = {  # label field in the synth json -> question
    "shape": "What shape are the objects?",
    "colour": "What colour are the objects?",
    "count": "How many objects are there?",
    "position": "Where are the objects?",
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


@dataclass
class Conversation:
    """One LLaVA sample: an image and alternating (question, answer) turns."""

    id: str
    image: Path
    turns: list[tuple[str, str]]


def read_llava_json(path: str | Path, image_folder: str | Path | None = None) -> list[Conversation]:
    """Read and validate a LLaVA conversation file; images resolve against `image_folder` (default: its folder)."""
    path = Path(path)
    folder = Path(image_folder) if image_folder else path.parent
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: conversation file is missing") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{path}: empty split (expected a non-empty JSON list of conversations)")
    out = []
    for i, item in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(item, dict) or "image" not in item or "conversations" not in item:
            raise DatasetError(f"{where}: needs keys 'image' and 'conversations'")
        image = folder / item["image"]
        if not image.is_file():
            raise DatasetError(f"{image}: image of {where} is missing")
        conv = item["conversations"]
        if not conv or len(conv) % 2:
            raise DatasetError(f"{where}: 'conversations' must hold human/gpt pairs")
        turns = []
        for j in range(0, len(conv), 2):
            h, g = conv[j], conv[j + 1]
            if h.get("from") != "human" or g.get("from") != "gpt":
                raise DatasetError(f"{where}: turn {j} must be from 'human' then 'gpt', got {h.get('from')!r}, "
                                   f"{g.get('from')!r}")
            turns.append((str(h["value"]), str(g["value"])))
        if IMAGE_MARK not in turns[0][0]:
            turns[0] = (f"{IMAGE_MARK}\n{turns[0][0]}", turns[0][1])
        out.append(Conversation(str(item.get("id", i)), image, turns))
    return out


def synth_answer(field: str, meta: dict[str, Any]) -> str | None:
    v = meta.get(field)
    if v is None:
        return None
    return COUNT_WORDS.get(int(v), str(v)) if field == "count" else str(v)


def write_synth_vqa(split: Split, out: str | Path, limit: int | None = None, multi_turn: bool = False,
                    seed: int = 0) -> Path:
    """Questions about shape, colour, count and position of every synth image, as LLaVA JSON `OUT/<split>.json`
    with the images in `OUT/images/`: one single-turn conversation per (image, question), or with `multi_turn`
    one conversation per image with the questions in a seeded random order. Returns the JSON path."""
    import random

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for n, rec in enumerate(split.records()):
        if limit is not None and n >= limit:
            break
        rel = f"images/{split.name}-{rec.key}.png"
        rec.image.save(out / rel)
        qa = [(q, synth_answer(f, rec.meta)) for f, q in SYNTH_QUESTIONS.items() if synth_answer(f, rec.meta)]
        if not qa:
            continue
        if multi_turn:
            random.Random(f"{seed}-{split.name}-{rec.key}").shuffle(qa)
        groups = [qa] if multi_turn else [[x] for x in qa]
        for g, turns in enumerate(groups):
            conv = []
            for k, (q, a) in enumerate(turns):
                conv += [{"from": "human", "value": f"{IMAGE_MARK}\n{q}" if k == 0 else q},
                         {"from": "gpt", "value": a}]
            items.append({"id": f"{rec.key}-{g}", "image": rel, "conversations": conv})
    if not items:
        raise DatasetError(f"{split.root}: no synth labels ({', '.join(SYNTH_QUESTIONS)}) to ask about")
    path = out / f"{split.name}.json"
    path.write_text(json.dumps(items, indent=1))
    return path


def normalize_answer(text: str) -> str:
    """Exact-match normalization: lower case, surrounding whitespace and trailing punctuation dropped, inner
    whitespace collapsed."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!?,;: ").strip()


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"exact match needs equally many predictions and answers ({len(predictions)} vs "
                         f"{len(answers)}, at least one)")
    return sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)) / len(answers)


def question_key(question: str) -> str:
    return normalize_answer(question.replace(IMAGE_MARK, ""))


def majority_answers(conversations: Iterable[Conversation]) -> tuple[dict[str, str], str]:
    """Most frequent training answer per question, and overall (the blind baseline)."""
    per_q: dict[str, Counter] = {}
    overall: Counter = Counter()
    for c in conversations:
        for q, a in c.turns:
            per_q.setdefault(question_key(q), Counter())[normalize_answer(a)] += 1
            overall[normalize_answer(a)] += 1
    return {q: cnt.most_common(1)[0][0] for q, cnt in per_q.items()}, overall.most_common(1)[0][0]


def word_tokenizer(texts: Iterable[str]):
    """A word-level `PreTrainedTokenizerFast` over the words of `texts` (tiny LMs trained from scratch)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                     pre_tokenizers.Split(Regex(r"[?!.,:;]"), behavior="isolated")])
    words: dict[str, None] = {}
    for t in texts:
        for w, _ in split.pre_tokenize_str(t.replace(IMAGE_MARK, " ")):
            words.setdefault(w, None)
    vocab = {w: i for i, w in enumerate(specials + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def conversation_texts(conversations: Iterable[Conversation]) -> list[str]:
    return [t for c in conversations for turn in c.turns for t in turn] + ["USER:", "ASSISTANT:"]


class PromptBuilder:
    """LLaVA-1.5 "v1" layout: `[system ]USER: <image>\\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT: A2</s>...`.

    Token ids with IMAGE_TOKEN where the image goes; labels are IGNORE_LABEL except on answers and their EOS.
    """

    def __init__(self, tokenizer, system: str = "") -> None:
        self.tok, self.system = tokenizer, system
        if tokenizer.eos_token_id is None:
            raise ValueError("the LM's tokenizer has no EOS token; answers need one to end")

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(IMAGE_MARK)):
            if i:
                ids.append(IMAGE_TOKEN)
            if part.strip():
                ids += self.tok(part, add_special_tokens=False).input_ids
        return ids

    def build(self, turns: Sequence[tuple[str, str]], answer_last: bool = True) -> tuple[list[int], list[int]]:
        """(ids, labels) for `turns`; with answer_last=False the last answer is left out (the prompt to answer)."""
        ids = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        if self.system:
            ids += self._ids(self.system + " ")
        labels = [IGNORE_LABEL] * len(ids)
        for k, (q, a) in enumerate(turns):
            prompt = self._ids(f"USER: {q} ASSISTANT:")
            ids += prompt
            labels += [IGNORE_LABEL] * len(prompt)
            if k == len(turns) - 1 and not answer_last:
                break
            ans = self.tok(f" {a}", add_special_tokens=False).input_ids + [self.tok.eos_token_id]
            ids += ans
            labels += ans
        return ids, labels
