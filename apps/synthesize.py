"""`speech-llama synthesize --data IN --out DIR [--voice joe] [--text-field question]`."""

from __future__ import annotations

import argparse

from speech_llama.synthesize import TRAINING_MIX, synthesize_records
from speech_llama.tts import DEFAULT_VOICE, voice_names


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``synthesize`` subcommand's options to ``parser``."""
    parser.add_argument("--data", required=True, help="input records: a local .jsonl file")
    parser.add_argument("--out", required=True, help="output folder (audio/ and data.jsonl)")
    parser.add_argument("--voice", default=DEFAULT_VOICE, choices=voice_names() + [TRAINING_MIX],
                        help=f"voice (default Piper {DEFAULT_VOICE}; festival-slt is the held-out speaker of the corpus; "
                             f"{TRAINING_MIX}: every other corpus voice in turn, record by record)")
    parser.add_argument("--text-field", default="question", help="record field to speak")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``synthesize`` from parsed arguments; prints the data.jsonl path; returns 0."""
    data_path = synthesize_records(
        args.data,
        args.out,
        voice=args.voice,
        text_field=args.text_field,
        progress=not args.no_progress,
    )
    print(data_path)
    return 0
