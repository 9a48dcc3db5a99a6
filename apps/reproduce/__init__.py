"""`speech-llama reproduce`: the seed paper's experiments in miniature, end to end, offline.

The paper's central result is a cost and its cure: Stage-1 speech fine-tuning on another writer's
responses lowers the LLM's text→text (T2T) accuracy, and Layer-LR and LoRA keep more of it while
hearing better. The run trains every method on the paper's condition (`chatterbot-corpus` responses,
spoken prompts) at several seeds, Full-FT on the control the paper lacks (the base LLM's own
responses; typed questions), and decides each claim from paired intervals pooled over seeds and
questions.

Stages (each writes its outputs under DIR and is skipped when they already exist, so an
interrupted run continues where it stopped):

1. model      — build the preset's model (cpu-mini: offline-mini-aligned, its cached alignment reused;
                --fast: offline-mini).
2. data       — other-writer pairs (train and dev), the base LLM's own answers to the same questions,
                the importance set D and Table 1's perplexity set (training-question prompts answered
                by the base LLM), QA test set; training and dev prompts spoken by the corpus's training
                voices in turn, every held-out set by the held-out voice.
3. importance — text- and speech-input importance of the pre-trained model; deactivation check
                (Table 1) for both inputs.
4. train      — (--fast: a CTC alignment stage first.) Full-FT, Layer-LR (from stage 3's text summary),
                LoRA and distill in the paper's condition, seed by seed; the Full-FT controls; the first
                seeds keep checkpoints along training; text-input importance of every method's final model.
5. evaluate   — No-FT, start model and cascade; T2T / S2T of every final model and of each checkpoint
                (then removed), dev perplexity along the curves, response perplexity.
6. figures    — `speech-llama compare` (Fig. 1–4 analogues); then accuracy.png, frontier.png,
                `results.json` and `report.md`.
   (--ablation lora-rank: Table 3, LoRA at rank 8 / 16 / 24; --ablation learning-rate: the preset's
   learning rates × 0.5 / × 2 on the dev split; --ablation importance-per-parameter: region_freeze,
   importance_anchor and the uniform anchor, each setting (p, λ) scored on the dev split at seed 0 and
   the chosen one run at every seed, into Table 2 and the frontier — all after the main run, its stages
   reused.)

Every stage calls the project's own commands (build, synthesize, importance, deactivate, train,
eval, compare): nothing here is a second implementation.

Modules: `experiments` (presets and training runs), `layout` (paths under DIR), `other_writer`
(the chatterbot-corpus pairs), `splits` (text splits), `distill` (self-distilled responses), `configs`
(training YAML), `checkpoints` (models along training), `runner` (the stages), `analysis` (pooled
accuracies, differences, curves, frontier), `figures`, `report` (verdicts and report.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import paper
from .experiments import ALIGN, DISTILL, EXPERIMENT_PRESETS, METHODS, ExperimentPreset, TrainingRun
from .paper import PAPER_PRESETS
from .report import hypotheses, render_report
from .runner import Reproduction, run_command
from .splits import training_prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("cpu-mini", "gpu-1b", *PAPER_PRESETS), default="cpu-mini",
                        help="paper-1b / paper-8b: the paper's models and data on GPUs (docs/real-run.md)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--fast", action="store_true", help="a ≤ 10 min smoke run of every stage (tiny sizes)")
    parser.add_argument("--ablation", choices=("lora-rank", "learning-rate", "importance-per-parameter"),
                        help="after the main run (its stages reused): lora-rank = Table 3, LoRA at rank 8 / 16 / 24; "
                             "learning-rate = Full-FT and LoRA at the preset's rates × 0.5 and × 2, dev perplexity; "
                             "importance-per-parameter = region_freeze, importance_anchor and the uniform anchor, "
                             "settings chosen on dev, at every seed")
    parser.add_argument("--seeds", type=int,
                        help="seeds of every method in the paper's condition (default: the preset's; cpu-mini 3, --fast 2)")
    parser.add_argument("--no-progress", action="store_true")
    group = parser.add_argument_group("paper-1b / paper-8b")
    group.add_argument("--dry-run", action="store_true", help="print the plan and open every data set (one record)")
    group.add_argument("--train-records", type=int, help="first turns taken from each training set")
    group.add_argument("--gpus", type=int, help="FSDP processes (GPUs) of the run")
    group.add_argument("--data-root", type=Path, help="local copies of the data sets, one folder per repository name")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.preset in PAPER_PRESETS:
        return paper.run(args)
    used = [flag for flag, key in (("--dry-run", "dry_run"), ("--train-records", "train_records"), ("--gpus", "gpus"),
                                   ("--data-root", "data_root")) if getattr(args, key, None)]
    if used:
        raise ValueError(f"{', '.join(used)}: only for --preset paper-1b / paper-8b")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; pass a folder (new, or one a run wrote, to resume it)")
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be 1 or more, got {args.seeds}")
    preset = EXPERIMENT_PRESETS["cpu-mini-fast" if args.fast and args.preset == "cpu-mini" else args.preset]
    if args.seeds is not None:
        preset = replace(preset, seeds=args.seeds)
    reproduction = Reproduction(preset, args.out, progress=not args.no_progress)
    results = reproduction.run_ablation(args.ablation) if args.ablation else reproduction.run()
    print(json.dumps({"hypotheses": {k: v["status"] for k, v in results["hypotheses"].items()}, "wall_s": results["wall_s"]}))
    print(f"report: {Path(args.out) / 'report.md'}")
    return results


__all__ = [
    "ALIGN",
    "DISTILL",
    "EXPERIMENT_PRESETS",
    "METHODS",
    "ExperimentPreset",
    "Reproduction",
    "TrainingRun",
    "add_arguments",
    "hypotheses",
    "render_report",
    "run",
    "run_command",
    "training_prompts",
]
