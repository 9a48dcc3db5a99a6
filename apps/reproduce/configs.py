"""The training configs a reproduction writes (`DIR/configs/METHOD.yaml`, read by `speech-llama train`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .experiments import ALIGN
from .layout import RunLayout


def train_config(layout: RunLayout, method: str, progress: bool = True, lora_rank: int | None = None,
                 run_name: str | None = None, seed: int = 0) -> dict:
    """The trainer keys of one method: same data, steps and seed for every method; the alignment
    stage (`ALIGN`) trains the adaptor alone with CTC on the spoken prompts. `lora_rank`, `seed` and
    `run_name` (the folder under DIR/train) serve the LoRA-rank ablation and `--seeds`."""
    preset = layout.preset
    aligning = method == ALIGN
    config = {
        "model_name_or_path": str(layout.base_model if aligning else layout.start_model),
        "train_data": str(layout.spoken("train") if aligning else layout.qa_train_data),
        "method": method,
        **({"alignment_loss": "ctc"} if aligning else {}),
        "input": "speech",
        "max_length": 256,
        "transcript_ratio": preset.transcript_ratio,
        "adaptor_lr": preset.adaptor_learning_rate,
        "output_dir": str(layout.train_dir(run_name or method)),
        "learning_rate": (preset.adaptor_learning_rate if aligning else
                          preset.lora_learning_rate if method == "lora" else preset.learning_rate),
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,
        "max_steps": preset.align_steps if aligning else preset.max_steps,
        "per_device_train_batch_size": preset.align_batch_size if aligning else preset.batch_size,
        "gradient_accumulation_steps": 1,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": preset.use_cpu,
        "bf16": preset.dtype == "bfloat16" or preset.train_bf16,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": not progress,
    }
    if method == "lora":
        config["lora_r"] = lora_rank or preset.lora_rank
    if method == "layer_lr":
        config["importance"] = str(layout.importance("base-text").with_suffix(".json"))
    return config


def write_train_config(layout: RunLayout, method: str, progress: bool = True, lora_rank: int | None = None,
                       run_name: str | None = None, seed: int = 0) -> Path:
    """Write `DIR/configs/RUN.yaml` (keys in the order above) and return its path."""
    path = layout.dir / "configs" / f"{run_name or method}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(train_config(layout, method, progress, lora_rank, run_name, seed), sort_keys=False))
    return path
