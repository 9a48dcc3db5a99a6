"""Batched vs one-at-a-time greedy T2T answering on offline-mini, side by side in one run.

bs=1 is plain `model.generate`, one question at a time (the reference answers); bs=8 is what
`speech-llama eval --batch-size 8` runs (continuous batching with the shared prompt prefix computed
once, `speech_llama/batching.py`). For the record, also timed: the same runner at batch size 1
(what the prefix cache alone gives) and the fixed-batch `generate` it replaced.
Last line: {"speedup": throughput(bs=8) / throughput(bs=1), "identical": all answers equal, ...}
Target: speedup >= 4 with identical greedy answers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from speech_llama.evaluation import eval_items, length_sorted_batches, run_predictions
from speech_llama.generate import generate_answers, load_model
from speech_llama.presets import build_offline_mini
from speech_llama.records import load_records

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "data" / "demo_qa.jsonl"
MODEL_DIR = ROOT / "runs" / "offline-mini"
NUM_QUESTIONS = 32
MAX_NEW_TOKENS = 32


def timed_predictions(model, processor, items, batch_size: int) -> tuple[list[str], float]:
    started = time.perf_counter()
    predictions, _ = run_predictions(model, processor, items, "t2t", batch_size, MAX_NEW_TOKENS, progress=False)
    return predictions, time.perf_counter() - started


def timed_generate(model, processor, items, batch_size: int) -> tuple[list[str], float]:
    """`model.generate` on fixed length-sorted batches (each runs until its longest answer ends)."""
    predictions = [None] * len(items)
    started = time.perf_counter()
    for batch in length_sorted_batches(items, batch_size, by_audio=False):
        answers = generate_answers(model, processor, [items[i].question for i in batch], None, MAX_NEW_TOKENS)
        for index, answer in zip(batch, answers):
            predictions[index] = answer
    return predictions, time.perf_counter() - started


def main() -> int:
    if not (MODEL_DIR / "config.json").is_file():
        build_offline_mini(MODEL_DIR)
    model, processor = load_model(MODEL_DIR)
    items = eval_items(load_records(QUESTIONS, max_samples=NUM_QUESTIONS), "t2t")
    timed_predictions(model, processor, items[:2], batch_size=2)  # warm-up (allocator, kernels)
    single, single_s = timed_generate(model, processor, items, batch_size=1)
    batched, batched_s = timed_predictions(model, processor, items, batch_size=8)
    runner_single, runner_single_s = timed_predictions(model, processor, items, batch_size=1)
    fixed, fixed_s = timed_generate(model, processor, items, batch_size=8)
    differing = [i for i, (a, b) in enumerate(zip(single, batched)) if a != b]
    result = {
        "speedup": round(single_s / batched_s, 3),
        "identical": not differing,
        "differing_rows": differing,
        "n": len(items),
        "bs1_samples_per_s": round(len(items) / single_s, 3),
        "bs8_samples_per_s": round(len(items) / batched_s, 3),
        "runner_bs1_speedup": round(single_s / runner_single_s, 3),
        "runner_bs1_identical": runner_single == single,
        "batching_alone_speedup": round(runner_single_s / batched_s, 3),
        "fixed_batch_generate_speedup": round(single_s / fixed_s, 3),
        "fixed_batch_identical": fixed == single,
        "max_new_tokens": MAX_NEW_TOKENS,
        "threads": torch.get_num_threads(),
        "target": {"speedup": 4.0, "identical": True},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
