"""Intermediate models along training (the forgetting curve): kept as model folders until evaluated.

The trainer writes model-only checkpoints at one interval (`configs.save_steps`); the curve's steps are
turned into model folders the eval command loads (a LoRA checkpoint holds an adapter: it is merged onto
the start model, as `final/` is), the other steps are removed. Distillation, which has no trainer,
saves its curve steps itself (`alignment.distillation.distil_model_folder`'s stops).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trainers.checkpoints import CHECKPOINT

from .layout import done


def checkpoint_folders(output_dir: Path) -> dict[int, Path]:
    """step → `checkpoint-N` folder written by the trainer in `output_dir`."""
    if not output_dir.is_dir():
        return {}
    return {int(match.group(1)): path for path in output_dir.iterdir()
            if path.is_dir() and (match := CHECKPOINT.match(path.name))}


def keep_curve_checkpoints(output_dir: Path, steps: tuple[int, ...], start_model: Path, lora: bool) -> None:
    """Leave a loadable model folder at each of `steps` (LoRA merged) and remove every other checkpoint."""
    for step, folder in checkpoint_folders(output_dir).items():
        if step not in steps:
            shutil.rmtree(folder)
        elif lora and not done(folder / "config.json"):
            merge_adapter_checkpoint(folder, start_model)
    missing = [step for step in steps if not done(output_dir / f"checkpoint-{step}" / "config.json")]
    if missing:
        raise RuntimeError(f"{output_dir}: the trainer wrote no checkpoint at step(s) {missing}")


def merge_adapter_checkpoint(folder: Path, start_model: Path) -> Path:
    """Replace a LoRA checkpoint (adapter + trained adaptor) by the merged model folder."""
    from speech_llama.build import BuildInfo, save_model_folder
    from speech_llama.remote_code import load_processor
    from trainers.lora import load_adapted, merge_lora

    staging = folder.with_name(f".{folder.name}.merged")
    if staging.exists():
        shutil.rmtree(staging)
    merged = merge_lora(load_adapted(str(start_model), str(folder)))
    save_model_folder(merged, load_processor(start_model), staging,
                      BuildInfo(llm=f"{start_model} + LoRA {folder.name}", encoder="(the start model's)"))
    shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def remove_checkpoint(folder: Path) -> None:
    """An evaluated intermediate model: its predictions stay, its weights (≈ 0.6 GB) go."""
    if folder.exists():
        shutil.rmtree(folder)
