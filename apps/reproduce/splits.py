"""The reproduction's text splits, disjoint by construction, from the project's `data/` files.

- importance: the first N records of `general_knowledge_qa.jsonl` (the estimate's D);
- ppl: the next N (the perplexity set of Table 1);
- test: `demo_qa.jsonl`, then the rest of `general_knowledge_qa.jsonl` (Table 2);
- training prompts: `train_questions.jsonl` (no test question is among them).
"""

from __future__ import annotations

import random
from pathlib import Path

from speech_llama.files import read_jsonl

from .experiments import ExperimentPreset

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def training_prompts(count: int, seed: int = 0) -> list[dict]:
    """The first `count` prompts of `data/train_questions.jsonl` in a seeded shuffle (the file is
    grouped by kind, instructions first): any prefix mixes QA questions and instructions, and a
    smaller set is a prefix of a larger one."""
    prompts = read_jsonl(DATA_DIR / "train_questions.jsonl")
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


def qa_splits(preset: ExperimentPreset) -> dict[str, list[dict]]:
    """{"importance", "ppl", "test"} → QA records (question, answers), sized by the preset."""
    qa = read_jsonl(DATA_DIR / "general_knowledge_qa.jsonl")
    held_out = qa[preset.importance_records :]
    return {
        "importance": qa[: preset.importance_records],
        "ppl": held_out[: preset.ppl_records],
        "test": (read_jsonl(DATA_DIR / "demo_qa.jsonl") + held_out[preset.ppl_records :])[: preset.test_records],
    }
