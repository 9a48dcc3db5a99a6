"""QA answering with float32 vs bfloat16 weights, side by side in one run (T2T and S2T).

What `speech-llama eval --dtype bfloat16` buys on this CPU, and what it changes: throughput of each
precision at the reproduction's eval batch size, and the share of greedy answers (and of correct
answers) that agree. Model: the cached offline-mini-aligned folder when built, else offline-mini;
questions: data/demo_qa.jsonl, spoken once by the default Piper voice (cached under runs/).
Usage: python bench/inference_dtype.py [MODEL_DIR] [--smoke]   (--smoke: tiny-random, 4 questions with noise clips, seconds)
Last line: {"speedup_t2t": …, "speedup_s2t": …, "answers_agree_t2t": …, "cpu_runs_bfloat16": …, …}.
Target: speedup ≥ 1.5 with accuracy within 0.05 of float32's on a CPU that runs bf16 natively
(`speech_llama.precision`); on one that does not, the speedup is < 1 and "auto" picks float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from evaluate_metrics import load_metric
from speech_llama.evaluation import eval_items, run_predictions
from speech_llama.generate import load_model
from speech_llama.precision import cpu_runs_bfloat16
from speech_llama.presets import build_tiny_random, offline_mini_dir
from speech_llama.records import load_records
from speech_llama.synthesize import synthesize_records
from alignment.preset import aligned_cache_dir

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "data" / "demo_qa.jsonl"
SPOKEN_DIR = ROOT / "runs" / "bench-demo-qa-spoken"
BATCH_SIZE = 16
MAX_NEW_TOKENS = 32
# --smoke: tiny-random and a few questions with noise clips (bench/perplexity.py --smoke uses the same inputs)
SMOKE_QUESTIONS, SMOKE_BATCH_SIZE, SMOKE_MAX_NEW_TOKENS = 4, 2, 4


def default_model_dir() -> Path:
    aligned = aligned_cache_dir() / "model"
    return aligned if (aligned / "model.safetensors").is_file() else offline_mini_dir("offline-mini")


def spoken_demo_questions() -> Path:
    """data/demo_qa.jsonl spoken by the default Piper voice (synthesised once, then reused)."""
    return synthesize_records(QUESTIONS, SPOKEN_DIR, progress=False)


def smoke_inputs(scratch: Path) -> tuple[Path, Path]:
    """--smoke: (tiny-random built into `scratch`, the first SMOKE_QUESTIONS demo questions with noise clips of
    different lengths as their audio, in `scratch`: a random model cannot tell speech from noise, and no TTS runs)."""
    import numpy as np

    from speech_llama.audio import write_wav
    from speech_llama.files import read_jsonl, write_jsonl

    rng = np.random.default_rng(0)
    records = read_jsonl(QUESTIONS)[:SMOKE_QUESTIONS]
    for index, record in enumerate(records):
        clip = (0.1 * rng.standard_normal(int(16000 * (1.0 + 0.5 * index)))).astype(np.float32)
        record["audio"] = write_wav(scratch / "audio" / f"{index}.wav", clip).relative_to(scratch).as_posix()
    return build_tiny_random(scratch / "tiny-random"), write_jsonl(scratch / "data.jsonl", records)


def timed_answers(model, processor, items, task: str, batch_size: int = BATCH_SIZE,
                  max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list[str], float]:
    run_predictions(model, processor, items[:2], task, 2, 4, progress=False)  # warm-up (allocator, kernels)
    started = time.perf_counter()
    predictions, _ = run_predictions(model, processor, items, task, batch_size, max_new_tokens, progress=False)
    return predictions, time.perf_counter() - started


def accuracy(predictions: list[str], items) -> float:
    return load_metric("spoken_qa_accuracy").compute(predictions=predictions,
                                                     references=[item.answers for item in items])["accuracy"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", type=Path, help="model folder (default: offline-mini-aligned if built, else offline-mini)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"the same comparison on tiny-random and {SMOKE_QUESTIONS} questions with noise clips "
                             "(temporary folder), in seconds (for tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            model_dir, data = smoke_inputs(Path(scratch))
            model_dir = args.model_dir or model_dir
            return compare(model_dir, data, SMOKE_BATCH_SIZE, SMOKE_MAX_NEW_TOKENS)
        return compare(args.model_dir or default_model_dir(), spoken_demo_questions(), BATCH_SIZE, MAX_NEW_TOKENS)


def compare(model_dir: Path, data: Path, batch_size: int, max_new_tokens: int) -> int:
    records = load_records(data, require_audio=True)
    answers, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        model, processor = load_model(model_dir, dtype=dtype)
        for task in ("t2t", "s2t"):
            items = eval_items(records, task)
            answers[dtype, task], seconds[dtype, task] = timed_answers(model, processor, items, task, batch_size,
                                                                       max_new_tokens)
        del model
    result = {"model": str(model_dir), "n": len(records), "batch_size": batch_size, "threads": torch.get_num_threads(),
              "cpu_runs_bfloat16": cpu_runs_bfloat16()}
    for task in ("t2t", "s2t"):
        items = eval_items(records, task)
        reference, measured = answers["float32", task], answers["bfloat16", task]
        result.update({
            f"speedup_{task}": round(seconds["float32", task] / seconds["bfloat16", task], 3),
            f"samples_per_s_{task}": [round(len(items) / seconds[d, task], 3) for d in ("float32", "bfloat16")],
            f"answers_agree_{task}": round(sum(a == b for a, b in zip(reference, measured)) / len(items), 3),
            f"accuracy_{task}": [round(accuracy(reference, items), 3), round(accuracy(measured, items), 3)],
        })
    result["target"] = {"speedup": 1.5, "accuracy_within": 0.05}
    for task in ("t2t", "s2t"):
        fp32_rate, bf16_rate = result[f"samples_per_s_{task}"]
        print(f"{task}: float32 {fp32_rate} samples/s, bfloat16 {bf16_rate} samples/s, speedup {result[f'speedup_{task}']}x, "
              f"answers agree {result[f'answers_agree_{task}']}, accuracy {result[f'accuracy_{task}']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
