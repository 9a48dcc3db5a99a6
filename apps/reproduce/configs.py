"""The training configs a reproduction writes (`DIR/configs/RUN.yaml`, read by `speech-llama train`)."""

from __future__ import annotations

from functools import reduce
from math import gcd
from pathlib import Path

import yaml

from .experiments import ALIGN, CONSTRAINED, TrainingRun
from .layout import RunLayout


def save_steps(steps: tuple[int, ...]) -> int:
    """The trainer's one checkpoint interval that lands on every step of `steps` (their gcd)."""
    return reduce(gcd, steps)


def train_config(layout: RunLayout, run: TrainingRun, progress: bool = True, lora_rank: int | None = None,
                 run_name: str | None = None, learning_rate: float | None = None,
                 checkpoint_steps: tuple[int, ...] = ()) -> dict:
    """The trainer keys of one run: same prompts, steps and batch for every run; `run` says whose
    responses it learns (`train_records(run.targets)`), from which input, with which seed. The
    alignment stage (`ALIGN`) trains the adaptor alone with CTC on the spoken prompts.
    `lora_rank`, `learning_rate` and `run_name` (the folder under DIR/train) serve the ablations;
    `checkpoint_steps` keeps model-only checkpoints there (the forgetting curve)."""
    preset = layout.preset
    aligning = run.method == ALIGN
    config = {
        "model_name_or_path": str(layout.base_model if aligning else layout.start_model),
        "train_data": str(layout.spoken("train") if aligning else layout.train_records(run.targets)),
        "method": run.method,
        **({"alignment_loss": "ctc"} if aligning else {}),
        "input": run.input,
        "max_length": 256,
        # Speech rows only: a typed question has nothing to transcribe.
        "transcript_ratio": preset.transcript_ratio,
        "adaptor_lr": preset.adaptor_learning_rate,
        "output_dir": str(layout.train_dir(run_name or run.name)),
        "learning_rate": learning_rate or (preset.adaptor_learning_rate if aligning else
                                           preset.lora_learning_rate if run.method == "lora" else preset.learning_rate),
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,
        "max_steps": preset.align_steps if aligning else preset.max_steps,
        "per_device_train_batch_size": preset.align_batch_size if aligning else preset.batch_size,
        "gradient_accumulation_steps": 1,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        **({"save_strategy": "steps", "save_steps": save_steps(checkpoint_steps), "save_only_model": True}
           if checkpoint_steps else {"save_strategy": "no"}),
        "report_to": "none",
        "use_cpu": preset.use_cpu,
        "bf16": preset.dtype == "bfloat16" or preset.train_bf16,
        "seed": run.seed,
        "data_seed": run.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": not progress,
    }
    if run.method == "lora":
        config["lora_r"] = lora_rank or preset.lora_rank
    if run.method == "layer_lr":
        config["importance"] = str(layout.importance("base-text").with_suffix(".json"))
    if run.method in CONSTRAINED:
        config |= constraint_keys(layout, run)
    return config


def constraint_keys(layout: RunLayout, run: TrainingRun) -> dict:
    """A constrained run's trainer keys: the pre-trained model's text importance and its setting (p or λ);
    the uniform anchor is importance_anchor with every Ĩ = 1."""
    keys = {"method": "importance_anchor" if run.method == "uniform_anchor" else run.method,
            "importance": str(layout.importance("base-text"))}
    if run.method == "region_freeze":
        return keys | {"region_fraction": run.setting}
    return keys | {"anchor_lambda": run.setting,
                   "anchor_weighting": "uniform" if run.method == "uniform_anchor" else "importance"}


def write_train_config(layout: RunLayout, run: TrainingRun, progress: bool = True, lora_rank: int | None = None,
                       run_name: str | None = None, learning_rate: float | None = None,
                       checkpoint_steps: tuple[int, ...] = ()) -> Path:
    """Write `DIR/configs/RUN.yaml` (keys in the order above) and return its path."""
    name = run_name or run.name
    path = layout.dir / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = train_config(layout, run, progress, lora_rank, name, learning_rate, checkpoint_steps)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
