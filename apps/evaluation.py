"""`speech-llama eval`: spoken-QA accuracy (T2T, S2T, the ASR cascade) or read-back WER of a model folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speech_llama.evaluation import TASKS, evaluate_model
from speech_llama.generate import add_dtype_argument
from speech_llama.remote_code import add_trust_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--data", required=True, help="Hub id (fixie-ai/llama-questions, …), datasets folder or .jsonl")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--out", required=True, type=Path, help="output folder for predictions.jsonl and metrics.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--asr", help="Whisper checkpoint for --task cascade (default: the offline Whisper tiny.en)")
    parser.add_argument("--speech-instruction",
                        help="S2T: the text after the clip, replacing the folder's (processor.speech_instruction); '' for none")
    add_dtype_argument(parser)
    add_trust_argument(parser)


def run(args: argparse.Namespace) -> dict:
    metrics = evaluate_model(
        args.model, args.data, args.task, args.out, args.batch_size, args.max_samples, args.max_new_tokens,
        args.split, args.asr, trust_remote_code=args.trust_remote_code, dtype=args.dtype,
        speech_instruction=args.speech_instruction,
    )
    print(json.dumps(metrics))
    return metrics
