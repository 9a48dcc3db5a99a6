"""`speech-llama`: a thin dispatcher over the project's parts."""

from __future__ import annotations

import argparse
import importlib
import sys

# command → (module, help). Each module offers add_arguments(parser) and run(args).
COMMANDS = {
    "build": ("speech_llama.build", "assemble a SpeechLlama model folder (presets or Hub ids / local dirs)"),
    "synthesize": ("speech_llama.synthesize", "speak QA / instruction records with Piper TTS (16 kHz wavs + data.jsonl)"),
    "generate": ("speech_llama.generate", "answer a typed question or a wav file with a model folder"),
    "demo": ("speech_llama.demo", "serve the Gradio Space (importance explorer + try-it) on localhost"),
    "reproduce": ("speech_llama.reproduce", "the seed paper's experiments in miniature, end to end (results.json + report.md)"),
    "eval": ("speech_llama.evaluation", "spoken-QA accuracy: T2T, S2T or the Whisper-ASR cascade (batched, greedy)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speech-llama", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        importlib.import_module(args._module).run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"speech-llama {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
