"""`speech-llama generate`: answer a typed question or a wav file with a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from speech_llama.audio import SAMPLE_RATE, read_audio
from speech_llama.generate import generate_answers, load_model
from speech_llama.remote_code import add_trust_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (speech-llama build)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--question", help="typed question (T2T)")
    source.add_argument("--audio", type=Path, help="spoken question, any sampling rate (S2T)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    add_trust_argument(parser)


def run(args: argparse.Namespace) -> str:
    model, processor = load_model(args.model, trust_remote_code=args.trust_remote_code)
    if args.audio is not None:
        audio = read_audio(str(args.audio), where=str(args.audio))
        answer = generate_answers(model, processor, [None], [audio], args.max_new_tokens)[0]
        print(f"speech: {len(audio) / SAMPLE_RATE:.1f} s → {processor.num_speech_tokens(len(audio))} speech tokens")
    else:
        answer = generate_answers(model, processor, [args.question], None, args.max_new_tokens)[0]
    print(answer)
    return answer
