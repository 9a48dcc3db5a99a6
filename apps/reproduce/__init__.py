"""`speech-llama reproduce`: the seed paper's experiments in miniature, end to end, offline.

Stages (each writes its outputs under DIR and is skipped when they already exist, so an
interrupted run continues where it stopped):

1. model      — build the preset's model (cpu-mini: offline-mini-aligned, its cached alignment reused;
                --fast: offline-mini).
2. data       — training prompts from `data/train_questions.jsonl` answered by the base LLM itself
                (self-distilled responses, greedy), and QA test sets; training prompts spoken by the
                corpus's training voices in turn, every held-out set by the held-out voice.
3. importance — text- and speech-input importance of the pre-trained model; deactivation check
                (Table 1) for both inputs.
4. train      — Stage 1 with Full-FT, Layer-LR (from stage 3's text summary) and LoRA: same data,
                steps and seed; then text-input importance of each trained model.
   Then distill: the adaptor alone distilled from the frozen LLM (DiVA-style) on the same data and steps.
   (--ablation lora-rank, after stage 6: Table 3, LoRA at rank 8 / 16 / 24 on the same data.)
5. evaluate   — No-FT and per-method T2T / S2T accuracy, the Whisper-ASR cascade, perplexity.
6. report     — `results.json`, `report.md` and figures (Fig. 1–4 analogues).

Every stage calls the project's own commands (build, synthesize, importance, deactivate, train,
eval, compare): nothing here is a second implementation.

Modules: `experiments` (the experiment presets), `layout` (paths under DIR), `splits` (text
splits and training prompts), `distill` (self-distilled responses), `configs` (training YAML),
`runner` (the stages), `report` (claims and report.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .experiments import ALIGN, DISTILL, EXPERIMENT_PRESETS, METHODS, ExperimentPreset
from .report import hypotheses, render_report
from .runner import Reproduction, run_command
from .splits import training_prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("cpu-mini", "gpu-1b"), default="cpu-mini")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--fast", action="store_true", help="a ≤ 10 min smoke run of every stage (tiny sizes)")
    parser.add_argument("--ablation", choices=("lora-rank",),
                        help="after the main run (its stages reused), Table 3: LoRA at rank 8 / 16 / 24")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every method with seeds 0 … N-1 (same data and steps) and report mean ± spread")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; pass a folder (new, or one a run wrote, to resume it)")
    name = "cpu-mini-fast" if args.fast and args.preset == "cpu-mini" else args.preset
    reproduction = Reproduction(EXPERIMENT_PRESETS[name], args.out, progress=not args.no_progress)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be 1 or more, got {args.seeds}")
    results = reproduction.run_ablation(args.ablation) if args.ablation else reproduction.run()
    if args.seeds > 1:
        results = reproduction.run_seeds(args.seeds, results)
    print(json.dumps({"hypotheses": {k: v["held"] for k, v in results["hypotheses"].items()}, "wall_s": results["wall_s"]}))
    print(f"report: {Path(args.out) / 'report.md'}")
    return results


__all__ = [
    "ALIGN",
    "DISTILL",
    "EXPERIMENT_PRESETS",
    "METHODS",
    "ExperimentPreset",
    "Reproduction",
    "add_arguments",
    "hypotheses",
    "render_report",
    "run",
    "run_command",
    "training_prompts",
]
