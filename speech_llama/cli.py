"""`speech-llama`: a thin dispatcher over the project's parts."""

from __future__ import annotations

import argparse
import importlib
import sys

from .memory import reuse_freed_memory

# command → (module, help). Each module offers add_arguments(parser) and run(args).
COMMANDS = {
    "build": ("speech_llama.build", "assemble a SpeechLlama model folder (presets or Hub ids / local dirs)"),
    "synthesize": ("speech_llama.synthesize", "speak QA / instruction records with Piper TTS (16 kHz wavs + data.jsonl)"),
    "generate": ("speech_llama.generate", "answer a typed question or a wav file with a model folder"),
    "importance": ("importance.cli_importance", "first-order Taylor importance |θ·∂L/∂θ| → X.safetensors + X.json"),
    "deactivate": ("importance.cli_deactivate", "perplexity with the top / bottom / random fraction of parameters zeroed (Table 1)"),
    "compare": ("importance.cli_compare", "layer / module profiles, shift metrics, rank clustering, |Δθ| → JSON + PNG"),
    "demo": ("speech_llama.demo", "serve the Gradio Space (importance explorer + try-it) on localhost"),
    "reproduce": ("speech_llama.reproduce", "the seed paper's experiments in miniature, end to end (results.json + report.md)"),
    "eval": ("speech_llama.evaluation", "spoken-QA accuracy: T2T, S2T or the Whisper-ASR cascade (batched, greedy)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported (each pulls in torch/transformers)."""
    parser = argparse.ArgumentParser(prog="speech-llama", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(subparser)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    command = argv[0] if argv and argv[0] in COMMANDS else None
    return build_parser(command).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    reuse_freed_memory()
    try:
        importlib.import_module(args._module).run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"speech-llama {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
