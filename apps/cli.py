"""`speech-llama`: a thin dispatcher over the project's parts."""

from __future__ import annotations

import argparse
import sys

from importance.cli import ENGINE_COMMANDS
from speech_llama import commands

# command → (module, help). Each module offers add_arguments(parser) and run(args).
COMMANDS = {
    "build": ("apps.build", "assemble a SpeechLlama model folder (presets or Hub ids / local dirs)"),
    "synthesize": ("apps.synthesize", "speak QA / instruction records with offline voices (Piper, Festival, Flite, eSpeak NG) (16 kHz wavs + data.jsonl)"),
    "corpus": ("apps.corpus", "the speech corpus for alignment: many offline voices, cached encoder states (resumable)"),
    "generate": ("apps.generate", "answer a typed question or a wav file with a model folder"),
    "serve": ("apps.serve", "an OpenAI-compatible chat endpoint (typed and spoken questions, streaming, continuous batching)"),
    **ENGINE_COMMANDS,  # importance, deactivate, compare
    "train": ("apps.train", "Stage-1 training in this process (the arguments of `accelerate launch trainers/run.py`)"),
    "demo": ("apps.demo", "serve the Gradio Space (importance explorer + try-it) on localhost"),
    "reproduce": ("apps.reproduce", "the seed paper's experiments in miniature, end to end (results.json + report.md)"),
    "eval": ("apps.evaluation", "spoken-QA accuracy: T2T, S2T, the Whisper-ASR cascade, or read-back WER (batched, greedy)"),
    "eval-diff": ("apps.eval_diff", "two eval runs on the same questions: accuracies and their paired difference, 95 % bootstrap"),
}
PROG = "speech-llama"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported (each pulls in torch/transformers)."""
    return commands.build_parser(PROG, COMMANDS, command, __doc__)


def parse(argv: list[str]) -> argparse.Namespace:
    return commands.parse(PROG, COMMANDS, argv, __doc__)


def main(argv: list[str] | None = None) -> int:
    return commands.main(PROG, COMMANDS, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
