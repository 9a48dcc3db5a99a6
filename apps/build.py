"""`speech-llama build`: a named preset (`speech_llama.presets`, the two trained releases) or any LLM + Whisper encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from speech_llama.build import DTYPES, build_from_pretrained
from speech_llama.presets import PRESETS as WEIGHT_PRESETS
from alignment.release import offline_mini_aligned
from trainers.release import LORA_PRESET, speech_llama_lora_mini

# Presets assembled from shipped weights (speech_llama.presets), plus the two trained releases:
# offline-mini with its aligned adaptor (alignment.release) and the Stage-1 LoRA model on top of it
# (trainers.release) — assembled from the files in the repository, or trained again on the cached
# speech corpus with `--retrain`.
RELEASED = {"offline-mini-aligned": offline_mini_aligned, LORA_PRESET: speech_llama_lora_mini}
PRESETS = {**WEIGHT_PRESETS, **RELEASED}
# Options of --llm/--encoder builds only; a preset fixes its own adaptor and dtype (and refuses them).
DEFAULTS = {"downsample": 5, "adaptor_hidden": 2048, "dtype": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output model folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a ready-made build (offline)")
    parser.add_argument("--llm", help="causal LM: Hub id (e.g. meta-llama/Llama-3.2-1B-Instruct) or local dir")
    parser.add_argument("--encoder", help="Whisper checkpoint: Hub id (e.g. openai/whisper-large-v3) or local dir")
    parser.add_argument("--downsample", type=int, help=f"adaptor k: encoder frames per LLM position (default {DEFAULTS['downsample']})")
    parser.add_argument("--adaptor-hidden", type=int, help=f"adaptor hidden width (default {DEFAULTS['adaptor_hidden']})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help=f"weights' dtype (default {DEFAULTS['dtype']})")
    parser.add_argument("--retrain", action="store_true",
                        help=f"{' / '.join(RELEASED)}: train the weights on the speech corpus with today's recipe (corpus "
                             "and training cached and resumable) instead of assembling the shipped release")
    parser.add_argument("--release-out", type=Path,
                        help="with a released preset: also write the trained weights and their manifest to this folder "
                             "(implies --retrain; alignment/releases/NAME and trainers/releases/NAME are the repository's)")


def run(args: argparse.Namespace) -> Path:
    given = [f"--{name.replace('_', '-')}" for name in DEFAULTS if getattr(args, name) is not None]
    released = " or ".join(f"--preset {name}" for name in RELEASED)
    if not args.preset and (args.retrain or args.release_out is not None):
        raise ValueError(f"--retrain / --release-out apply to {released} only")
    if args.preset:
        if args.llm or args.encoder:
            raise ValueError("--preset builds its own LLM and encoder; drop --llm/--encoder")
        if given:
            raise ValueError(f"--preset {args.preset} fixes its adaptor and dtype; drop {'/'.join(given)} "
                             "(or build with --llm and --encoder)")
        retraining = args.retrain or args.release_out is not None
        if retraining and args.preset not in RELEASED:
            raise ValueError(f"--retrain / --release-out apply to {released} only, not {args.preset}")
        if retraining:
            out = RELEASED[args.preset](args.out, retrain=True, release_out=args.release_out)
        else:
            out = PRESETS[args.preset](args.out)
    else:
        if not (args.llm and args.encoder):
            raise ValueError("pass --preset, or both --llm and --encoder")
        options = {name: DEFAULTS[name] if getattr(args, name) is None else getattr(args, name) for name in DEFAULTS}
        if options["downsample"] < 1 or options["adaptor_hidden"] < 1:
            raise ValueError("--downsample and --adaptor-hidden must be at least 1")
        out = build_from_pretrained(args.llm, args.encoder, args.out, options["downsample"], options["adaptor_hidden"],
                                    options["dtype"])
    print(f"built {out}")
    return out
