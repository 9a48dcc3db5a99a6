"""The reproduction's text splits, disjoint by construction, from the project's `data/` files.

- training prompts: a seeded shuffle of `train_questions.jsonl`; the methods train on a prefix,
  the importance set D is the first 1/30 of the methods' training records (the paper's D);
- held-out prompts: the tail of the same shuffle (the training distribution, never trained on),
  answered by the base LLM: the perplexity set of Table 1's paper-protocol row;
- test: the held-out QA questions (`demo_qa.jsonl` + `general_knowledge_qa.jsonl`, duplicates
  dropped: the corpus's held-out split), read by the held-out voice (Table 2; their short gold
  answers are Table 1's second row).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from alignment.corpus import held_out_records
from speech_llama.files import read_jsonl

from .experiments import ExperimentPreset

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
IMPORTANCE_FRACTION = 1 / 30  # D = 1/30 of the training data (the paper's protocol)


def _shuffled_prompts(seed: int = 0) -> list[dict]:
    prompts = read_jsonl(DATA_DIR / "train_questions.jsonl")
    random.Random(seed).shuffle(prompts)
    return prompts


def training_prompts(count: int, seed: int = 0) -> list[dict]:
    """The first `count` prompts of `data/train_questions.jsonl` in a seeded shuffle (the file is
    grouped by kind, instructions first): any prefix mixes QA questions and instructions, and a
    smaller set is a prefix of a larger one."""
    return _shuffled_prompts(seed)[:count]


def held_out_prompts(count: int, trained: int, seed: int = 0) -> list[dict]:
    """The last `count` prompts of the same shuffle: the training distribution, disjoint from the
    first `trained` (refused when the two would overlap)."""
    prompts = _shuffled_prompts(seed)
    if count + trained > len(prompts):
        raise ValueError(f"{count} held-out prompts and {trained} training prompts overlap: "
                         f"data/train_questions.jsonl has {len(prompts)}")
    return prompts[len(prompts) - count:]


def importance_count(preset: ExperimentPreset) -> int:
    """|D|: 1/30 of the methods' training records (at least one batch of the estimate)."""
    return max(preset.importance_batch_size, math.ceil(preset.train_records * IMPORTANCE_FRACTION))


def qa_splits(preset: ExperimentPreset) -> dict[str, list[dict]]:
    """{"test"} → the held-out QA records (question, answers), sized by the preset."""
    test = held_out_records()
    if preset.test_records > len(test):
        raise ValueError(f"test_records {preset.test_records} is more than the {len(test)} held-out QA questions")
    return {"test": test[: preset.test_records]}
