"""The reproduction's text splits, disjoint by construction, from the project's `data/` files and the
other-writer corpus.

- training prompts: a seeded shuffle of the usable other-writer pairs (`other_writer.py`); every run
  trains on the same prefix (its `other` targets are the pairs' responses, its `self` targets the base
  LLM's answers to the same questions); the alignment stage (when there is one) reads a longer prefix;
- dev: the next pairs of the same shuffle, never trained on: where steps and learning rates are chosen
  (their responses' perplexity, speech input);
- importance set D and Table 1's perplexity set: the head and the tail of a seeded shuffle of
  `train_questions.jsonl`, answered by the base LLM (the protocol of the earlier runs, so claim (a)
  and the Layer-LR coefficients stay comparable with them);
- test: the held-out QA questions (`demo_qa.jsonl` + `general_knowledge_qa.jsonl`, duplicates
  dropped: the corpus's held-out split), read by the held-out voice (Table 2; their short gold
  answers are Table 1's second row). No other-writer pair overlaps them (`other_writer.held_out_overlap`).
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from pathlib import Path

from alignment.corpus import held_out_records
from speech_llama.files import read_jsonl

from .experiments import ExperimentPreset
from .other_writer import OtherWriterData, usable_pairs

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
IMPORTANCE_FRACTION = 1 / 30  # |D| = 1/30 of the training records (the paper's protocol)


def _shuffled_prompts(seed: int = 0) -> list[dict]:
    prompts = read_jsonl(DATA_DIR / "train_questions.jsonl")
    random.Random(seed).shuffle(prompts)
    return prompts


def training_prompts(count: int, seed: int = 0) -> list[dict]:
    """The first `count` prompts of `data/train_questions.jsonl` in a seeded shuffle (the file is
    grouped by kind, instructions first): any prefix mixes QA questions and instructions."""
    return _shuffled_prompts(seed)[:count]


def held_out_prompts(count: int, trained: int, seed: int = 0) -> list[dict]:
    """The last `count` prompts of the same shuffle: the training-question distribution, disjoint
    from the first `trained` (refused when the two would overlap)."""
    prompts = _shuffled_prompts(seed)
    if count + trained > len(prompts):
        raise ValueError(f"{count} held-out prompts and {trained} training prompts overlap: "
                         f"data/train_questions.jsonl has {len(prompts)}")
    return prompts[len(prompts) - count:]


def importance_count(preset: ExperimentPreset) -> int:
    """|D|: 1/30 of the training records (at least one batch of the estimate)."""
    return max(preset.importance_batch_size, math.ceil(preset.train_records * IMPORTANCE_FRACTION))


@lru_cache(maxsize=1)
def other_writer_data() -> OtherWriterData:
    """The usable other-writer pairs (read once per process: the overlap check scans every held-out question)."""
    return usable_pairs(held_out_records())


def other_writer_splits(preset: ExperimentPreset, seed: int = 0) -> dict[str, list[dict]]:
    """{"train", "align", "dev"} → records (question, response, category) from a seeded shuffle of the
    usable pairs: train is a prefix of align (the alignment stage's prompts), dev follows align."""
    pairs = list(other_writer_data().pairs)
    random.Random(seed).shuffle(pairs)
    aligned = max(preset.align_records, preset.train_records)
    if aligned + preset.dev_records > len(pairs):
        raise ValueError(f"{aligned} training and {preset.dev_records} dev records need more than the {len(pairs)} usable "
                         "other-writer pairs of chatterbot-corpus; lower train_records / align_records / dev_records")
    rows = [{"question": pair.question, "response": pair.response, "category": pair.category} for pair in pairs]
    return {"train": rows[: preset.train_records], "align": rows[:aligned], "dev": rows[aligned: aligned + preset.dev_records]}


def qa_splits(preset: ExperimentPreset) -> dict[str, list[dict]]:
    """{"test"} → the held-out QA records (question, answers), sized by the preset."""
    test = held_out_records()
    if preset.test_records > len(test):
        raise ValueError(f"test_records {preset.test_records} is more than the {len(test)} held-out QA questions")
    return {"test": test[: preset.test_records]}
