"""`speech-llama build`: a named preset (`speech_llama.presets`, `offline-mini-aligned`) or any LLM + Whisper encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from speech_llama.build import DTYPES, build_from_pretrained
from speech_llama.presets import PRESETS as WEIGHT_PRESETS
from trainers.speech_alignment import offline_mini_aligned

# Presets assembled from shipped weights (speech_llama.presets), plus the one that also trains:
# offline-mini with its adaptor aligned on the cached speech corpus (trainers.speech_alignment).
PRESETS = {**WEIGHT_PRESETS, "offline-mini-aligned": offline_mini_aligned}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output model folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a ready-made build (offline)")
    parser.add_argument("--llm", help="causal LM: Hub id (e.g. meta-llama/Llama-3.2-1B-Instruct) or local dir")
    parser.add_argument("--encoder", help="Whisper checkpoint: Hub id (e.g. openai/whisper-large-v3) or local dir")
    parser.add_argument("--downsample", type=int, default=5, help="adaptor k: encoder frames per LLM position")
    parser.add_argument("--adaptor-hidden", type=int, default=2048, help="adaptor hidden width")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")


def run(args: argparse.Namespace) -> Path:
    if args.preset:
        if args.llm or args.encoder:
            raise SystemExit("error: --preset builds its own LLM and encoder; drop --llm/--encoder")
        out = PRESETS[args.preset](args.out)
    else:
        if not (args.llm and args.encoder):
            raise SystemExit("error: pass --preset, or both --llm and --encoder")
        out = build_from_pretrained(args.llm, args.encoder, args.out, args.downsample, args.adaptor_hidden, args.dtype)
    print(f"built {out}")
    return out
