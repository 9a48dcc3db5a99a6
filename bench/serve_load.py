"""`speech-llama serve` under load: 1, 8 and 32 concurrent streaming clients on the same typed questions.

Workloads (--workload): `instructions` (default), the first 96 prompts of data/train_questions.jsonl
("Give me three tips for…": answers run to the 32-token budget); `demo`, the first 32 questions of
data/demo_qa.jsonl (short factual answers). A finite run ends with a drain — the last requests decode
in a batch that empties row by row — which weighs more the fewer requests each client sends: the
demo workload's 4 requests per client at 8 clients spend about a third of their decode steps below 7 rows.

The server (max batch 8, the command's default) runs in this process on a loopback port; the clients
are the `openai` client on threads, each taking the next question until all are answered. One
client (requests one after another) is the reference; for each level: requests/s, completion
tokens/s, p50/p95 latency and time to the first token, and whether every answer equals the
reference's. Bounded: each level answers the same N questions, and stops handing out questions
after --level-limit-s (its figures are then over the answered ones).
Last line: {"throughput_ratio_8": tokens/s(8 clients) / tokens/s(1), "identical": all answers equal, ...}.
Target: throughput_ratio_8 >= 4 with identical answers (offline-mini, 2 CPU cores).

    python bench/serve_load.py [--workload instructions|demo] [--smoke]
        (--smoke: tiny-random, the workload's first 8 questions, 8 tokens each, in seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from openai import OpenAI

from speech_llama.generate import load_model
from speech_llama.presets import build_offline_mini, build_tiny_random
from speech_llama.files import read_jsonl
from speech_llama.serving import ServeConfig, create_app, serving_in_background

ROOT = Path(__file__).resolve().parents[1]
# workload → (file, questions taken from its head)
WORKLOADS = {"instructions": (ROOT / "data" / "train_questions.jsonl", 96), "demo": (ROOT / "data" / "demo_qa.jsonl", 32)}
MODEL_DIR = ROOT / "runs" / "offline-mini"
LEVELS = (1, 8, 32)
MAX_NEW_TOKENS = 32
MAX_BATCH = 8
LEVEL_LIMIT_S = 300.0
# --smoke: tiny-random, a handful of questions and tokens (the same three levels)
SMOKE_QUESTIONS, SMOKE_MAX_NEW_TOKENS = 8, 8
SERVED_NAME = "bench"


# A NamedTuple, not a dataclass: tests/test_docs_commands.py loads benches outside sys.modules, where @dataclass fails.
class Timing(NamedTuple):
    """One answered request: its text, completion tokens, seconds to the first text and to the end."""

    text: str
    tokens: int
    first_token_s: float
    latency_s: float


def ask(client: OpenAI, question: str, max_new_tokens: int) -> Timing:
    """One streamed request, timed from sending to the first text and to the last event."""
    started = time.perf_counter()
    first, pieces, tokens = None, [], 0
    stream = client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": question}],
                                            max_tokens=max_new_tokens, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - started
            pieces.append(chunk.choices[0].delta.content)
    latency = time.perf_counter() - started
    return Timing("".join(pieces), tokens, latency if first is None else first, latency)


def run_level(client: OpenAI, questions: list[str], clients: int, max_new_tokens: int, limit_s: float) -> tuple[dict, float]:
    """`clients` threads answer `questions` (each takes the next unanswered one) → ({index: Timing}, wall seconds)."""
    results: dict[int, Timing] = {}
    next_index, lock = iter(range(len(questions))), threading.Lock()
    errors: list[BaseException] = []
    started = time.perf_counter()

    def client_loop():
        while time.perf_counter() - started < limit_s:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            try:
                results[index] = ask(client, questions[index], max_new_tokens)
            except Exception as error:  # reported after the level; the other clients go on
                errors.append(error)
                return

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed at {clients} clients: {errors[0]}")
    return results, time.perf_counter() - started


def summary(results: dict[int, Timing], wall_s: float) -> dict:
    latencies = [timing.latency_s for timing in results.values()]
    first = [timing.first_token_s for timing in results.values()]
    tokens = sum(timing.tokens for timing in results.values())
    return {
        "requests": len(results), "seconds": round(wall_s, 3),
        "requests_per_s": round(len(results) / wall_s, 3), "tokens_per_s": round(tokens / wall_s, 2),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
        "first_token_p50_s": round(float(np.percentile(first, 50)), 3),
        "first_token_p95_s": round(float(np.percentile(first, 95)), 3),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help=f"the same levels on tiny-random (temporary folder): {SMOKE_QUESTIONS} questions of "
                             f"{SMOKE_MAX_NEW_TOKENS} new tokens, in seconds (for tests)")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="instructions",
                        help="instructions: 96 prompts with long answers (default); demo: 32 short factual questions")
    parser.add_argument("--level-limit-s", type=float, default=LEVEL_LIMIT_S,
                        help=f"stop handing out questions after this long at one level (default {LEVEL_LIMIT_S:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path, count = WORKLOADS[args.workload]
        questions = [record["question"] for record in read_jsonl(path)]
        if args.smoke:
            return compare(build_tiny_random(Path(scratch) / "tiny-random"), questions[:SMOKE_QUESTIONS],
                           SMOKE_MAX_NEW_TOKENS, args.level_limit_s, args.workload)
        if not (MODEL_DIR / "config.json").is_file():
            build_offline_mini(MODEL_DIR)
        return compare(MODEL_DIR, questions[:count], MAX_NEW_TOKENS, args.level_limit_s, args.workload)


def compare(model_dir: Path, questions: list[str], max_new_tokens: int, limit_s: float, workload: str) -> int:
    model, processor = load_model(model_dir)
    config = ServeConfig(model_name=SERVED_NAME, max_batch=MAX_BATCH, max_queue=max(LEVELS), max_new_tokens=max_new_tokens)
    levels, answers = {}, {}
    with serving_in_background(create_app(model, processor, config)) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=limit_s + 60)
        ask(client, questions[0], 2)  # warm-up (allocator, kernels, the shared prompt prefix)
        for clients in LEVELS:
            results, wall_s = run_level(client, questions, clients, max_new_tokens, limit_s)
            levels[clients] = summary(results, wall_s)
            answers[clients] = {index: timing.text for index, timing in results.items()}
            print(f"{clients:>2} client(s): {levels[clients]['requests']} requests in {wall_s:.2f} s, "
                  f"{levels[clients]['requests_per_s']} req/s, {levels[clients]['tokens_per_s']} tokens/s, latency p50 "
                  f"{levels[clients]['latency_p50_s']} s p95 {levels[clients]['latency_p95_s']} s, first token p50 "
                  f"{levels[clients]['first_token_p50_s']} s", flush=True)
    reference = answers[1]
    differing = sorted({index for clients in LEVELS[1:] for index, text in answers[clients].items()
                        if index in reference and text != reference[index]})
    result = {
        "throughput_ratio_8": round(levels[8]["tokens_per_s"] / levels[1]["tokens_per_s"], 3),
        "throughput_ratio_32": round(levels[32]["tokens_per_s"] / levels[1]["tokens_per_s"], 3),
        "identical": not differing,
        "differing_questions": differing,
        "levels": {str(clients): figures for clients, figures in levels.items()},
        "workload": workload,
        "n": len(questions),
        "max_new_tokens": max_new_tokens,
        "max_batch": MAX_BATCH,
        "model": str(model_dir) if model_dir == MODEL_DIR else model_dir.name,
        "threads": torch.get_num_threads(),
        "target": {"throughput_ratio_8": 4.0, "identical": True},
    }
    print(f"8 clients vs 1: {result['throughput_ratio_8']}x tokens/s, 32 clients: {result['throughput_ratio_32']}x; "
          f"identical {result['identical']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
