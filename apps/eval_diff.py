"""`speech-llama eval-diff`: is one eval run better than another on the same questions?

Reads two `speech-llama eval` output folders (their `predictions.jsonl`), checks that they scored
the same questions in the same order, and prints both accuracies with 95 % bootstrap intervals
and the paired difference A − B with its interval (`speech_llama.statistics`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speech_llama.files import read_jsonl
from speech_llama.statistics import bootstrap_interval, paired_difference


def correct_column(run_dir: Path) -> tuple[list[str], list[bool]]:
    """(questions, correct) of one eval folder, in its order."""
    path = Path(run_dir) / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no predictions.jsonl (pass a folder `speech-llama eval --out` wrote)")
    rows = read_jsonl(path)
    for line, row in enumerate(rows, start=1):
        if not isinstance(row.get("correct"), bool) or "question" not in row:
            raise ValueError(f"{path}, line {line}: needs 'question' and a true/false 'correct'")
    return [row["question"] for row in rows], [row["correct"] for row in rows]


def compare_runs(run_a: Path, run_b: Path, seed: int = 0) -> dict:
    questions_a, correct_a = correct_column(run_a)
    questions_b, correct_b = correct_column(run_b)
    if questions_a != questions_b:
        first = next((i for i, (qa, qb) in enumerate(zip(questions_a, questions_b)) if qa != qb),
                     min(len(questions_a), len(questions_b)))
        raise ValueError(f"{run_a} and {run_b} did not score the same questions (they differ at row {first + 1}; "
                         f"{len(questions_a)} vs {len(questions_b)} rows): a paired comparison needs the same set")
    return {"a": {"run": str(run_a), **bootstrap_interval(correct_a, seed=seed)},
            "b": {"run": str(run_b), **bootstrap_interval(correct_b, seed=seed)},
            "a_minus_b": paired_difference(correct_a, correct_b, seed=seed)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", type=Path, help="an eval output folder (predictions.jsonl)")
    parser.add_argument("run_b", type=Path, help="another one, on the same questions")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run(args: argparse.Namespace) -> dict:
    result = compare_runs(args.run_a, args.run_b, args.seed)
    print(json.dumps(result))
    return result
