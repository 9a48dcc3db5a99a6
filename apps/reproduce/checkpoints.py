"""Intermediate models along training (the forgetting curve): kept as model folders until evaluated.

The trainer writes model-only checkpoints at one interval (`configs.save_steps`); the curve's steps are
turned into model folders the eval command loads (a LoRA checkpoint holds an adapter: it is merged onto
the start model, as `final/` is), the other steps are removed. Distillation, which has no trainer,
stops at each curve step and saves its model there; its optimiser state is on disk between stops and
its batches are drawn in advance from its seed, so the stops do not change the run.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
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


def _distilled_steps(out_dir: Path) -> int:
    """Steps the distillation state in `out_dir` has done (0 before its first stop)."""
    import torch

    from alignment.distillation import STATE_NAME

    state = out_dir / STATE_NAME
    return int(torch.load(state, map_location="cpu", weights_only=True)["step"]) if state.is_file() else 0


def distil_with_checkpoints(start_model: Path, records: Path, out_dir: Path, settings, stops: tuple[int, ...],
                            progress: bool = True) -> Path:
    """`alignment.distillation.distil_model_folder` that also saves `checkpoint-N` at each of `stops`;
    resumable from `out_dir` (the state file holds the adaptor and optimiser of the last stop)."""
    from alignment.distillation import distill, spoken_response_clips
    from speech_llama.build import BuildInfo, save_model_folder
    from speech_llama.files import read_jsonl
    from speech_llama.generate import load_model

    final = out_dir / "final"
    if done(final / "config.json"):
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(start_model)
    clips, responses = spoken_response_clips(model, processor, read_jsonl(records), records)
    if len(clips) < settings.batch_size:
        raise ValueError(f"{records}: {len(clips)} records, fewer than one batch of {settings.batch_size}")
    for stop in (*sorted(step for step in stops if step < settings.steps), settings.steps):
        if _distilled_steps(out_dir) > stop:  # a resumed run past this stop: its model was saved (and maybe evaluated)
            continue
        distill(model, processor, clips, responses, out_dir, replace(settings, steps=stop), progress)
        folder = final if stop == settings.steps else out_dir / f"checkpoint-{stop}"
        if not done(folder / "config.json"):
            model.requires_grad_(False)
            info = BuildInfo(llm=f"frozen, from {start_model}", encoder=f"frozen, from {start_model}", preset="distill",
                             adaptor=f"{start_model}'s, then distilled from the frozen LLM reading the transcripts (DiVA-style "
                                     f"KL + {settings.ctc_weight} × CTC), {stop} of {settings.steps} steps of "
                                     f"{settings.batch_size} on {records}.")
            save_model_folder(model, processor, folder, info)
    return final
