"""Batched vs one-at-a-time greedy T2T answering on offline-mini, side by side in one run.

bs=1 is plain `model.generate`, one question at a time (the reference answers); bs=8 is what
`speech-llama eval --batch-size 8` runs (continuous batching with the shared prompt prefix computed
once, `speech_llama/batching.py`). For the record, also timed: the same runner at batch size 1
(what the prefix cache alone gives) and the fixed-batch `generate` it replaced.
Last line: {"speedup": throughput(bs=8) / throughput(bs=1), "identical": all answers equal, ...}
Target: speedup >= 4 with identical greedy answers.

    python bench/eval_batching.py [--smoke]   (--smoke: tiny-random, 6 questions, bs=4, in seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from speech_llama.evaluation import eval_items, length_sorted_batches, run_predictions
from speech_llama.generate import generate_answers, load_model
from speech_llama.presets import build_offline_mini, build_tiny_random
from speech_llama.records import load_records

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "data" / "demo_qa.jsonl"
MODEL_DIR = ROOT / "runs" / "offline-mini"
NUM_QUESTIONS = 32
MAX_NEW_TOKENS = 32
BATCH_SIZE = 8
# --smoke: tiny-random, a handful of questions and tokens (the same four runs)
SMOKE_QUESTIONS, SMOKE_MAX_NEW_TOKENS, SMOKE_BATCH_SIZE = 6, 8, 4


def timed_predictions(model, processor, items, batch_size: int, max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list[str], float]:
    started = time.perf_counter()
    predictions, _ = run_predictions(model, processor, items, "t2t", batch_size, max_new_tokens, progress=False)
    return predictions, time.perf_counter() - started


def timed_generate(model, processor, items, batch_size: int, max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list[str], float]:
    """`model.generate` on fixed length-sorted batches (each runs until its longest answer ends)."""
    predictions = [None] * len(items)
    started = time.perf_counter()
    for batch in length_sorted_batches(items, batch_size, by_audio=False):
        answers = generate_answers(model, processor, [items[i].question for i in batch], None, max_new_tokens)
        for index, answer in zip(batch, answers):
            predictions[index] = answer
    return predictions, time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help=f"the same comparison on tiny-random (temporary folder): {SMOKE_QUESTIONS} questions, "
                             f"{SMOKE_MAX_NEW_TOKENS} new tokens, batch size {SMOKE_BATCH_SIZE}, in seconds (for tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            return compare(build_tiny_random(Path(scratch) / "tiny-random"), SMOKE_QUESTIONS, SMOKE_MAX_NEW_TOKENS,
                           SMOKE_BATCH_SIZE)
        if not (MODEL_DIR / "config.json").is_file():
            build_offline_mini(MODEL_DIR)
        return compare(MODEL_DIR, NUM_QUESTIONS, MAX_NEW_TOKENS, BATCH_SIZE)


def compare(model_dir: Path, num_questions: int, max_new_tokens: int, batch_size: int) -> int:
    model, processor = load_model(model_dir)
    items = eval_items(load_records(QUESTIONS, max_samples=num_questions), "t2t")
    timed_predictions(model, processor, items[:2], 2, max_new_tokens)  # warm-up (allocator, kernels)
    single, single_s = timed_generate(model, processor, items, 1, max_new_tokens)
    batched, batched_s = timed_predictions(model, processor, items, batch_size, max_new_tokens)
    runner_single, runner_single_s = timed_predictions(model, processor, items, 1, max_new_tokens)
    fixed, fixed_s = timed_generate(model, processor, items, batch_size, max_new_tokens)
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
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "model": str(model_dir) if model_dir == MODEL_DIR else model_dir.name,
        "threads": torch.get_num_threads(),
        "target": {"speedup": 4.0, "identical": True},
    }
    print(f"{len(items)} questions: generate bs=1 {single_s:.2f} s, runner bs=1 {runner_single_s:.2f} s, "
          f"runner bs={batch_size} {batched_s:.2f} s, generate bs={batch_size} {fixed_s:.2f} s; "
          f"speedup {result['speedup']}x, identical {result['identical']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
