"""One importance run, end to end: records → batches → estimate → summary → artifact.

The `importance` command (`cli_importance`) and the Space's default content
(`spaces_demo.content`) both call :func:`estimate_and_save`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

from speech_llama.fsdp import is_sharded

from .artifact import DEFAULT_PARAMS, build_summary, save_artifact, save_artifact_gathered
from .estimate import EstimateResult, Reduction, estimate_importance, select_parameters, sharded_batches

# (batches, number of them on this rank) → the same batches, e.g. reporting progress as they pass.
BatchesWrapper = Callable[[Iterable, int], Iterable]


def estimate_and_save(
    model,
    processor,
    records,
    out: str | Path,
    *,
    model_name: str,
    data: str,
    input: str = "text",
    params: str = DEFAULT_PARAMS,
    reduction: Reduction = "mean",
    batch_size: int = 8,
    max_length: int = 512,
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
    wrap_batches: BatchesWrapper | None = None,
    late_fields: Callable[[EstimateResult], dict] | None = None,
    **extra,
) -> tuple[EstimateResult, dict | None]:
    """Estimate the importance of the ``params`` of ``model`` on ``records`` and, on rank 0, write
    the artifact ``out`` (+ its JSON summary).

    Args:
        model, processor: a loaded SpeechLlama model and its processor.
        records: records in the contract layout (`speech_llama.records.load_records`).
        out: the ``X.safetensors`` path (``X.json`` is written beside it).
        model_name, data: what the summary names as the model and the data.
        input: ``text`` (T2T prompts) or ``speech`` (S2T prompts).
        rank, world: this process and the number of processes (each takes batches i ≡ rank mod world;
            a sharded (FSDP2) model: every rank takes every batch and its slice of the rows).
        late_fields: sharded runs: called with the estimate on every rank once the tensors are
            written; its fields join the summary (e.g. each rank's peak memory).
        extra: more summary fields (e.g. ``skip``).
    Returns:
        (the estimate, the summary written — None on ranks other than 0).
    """
    from speech_llama.collate import QACollator

    collator = QACollator(processor, input=input, max_length=max_length)
    selected = select_parameters(model, params)
    sharded = any(is_sharded(param) for param in selected.values())
    first, step = (0, 1) if sharded else (rank, world)  # sharded: all batches, a slice of rows each
    total = len(range(first, math.ceil(len(records) / batch_size), step))
    batches = sharded_batches(records, collator, batch_size, first, step)
    if wrap_batches is not None:
        batches = wrap_batches(batches, total)
    result = estimate_importance(model, batches, selected, reduction=reduction, progress=progress, total_batches=total)
    fields = dict(
        num_layers=model.config.text_config.num_hidden_layers,
        model=model_name,
        input=input,
        num_samples=result.num_samples,
        num_tokens=result.num_tokens,
        reduction=reduction,
        params=params,
        skipped_batches=result.skipped_batches,
        batch_size=batch_size,
        max_length=max_length,
        data=data,
        processes=world,
        seconds=round(result.seconds, 1),
        **extra,
    )
    if sharded:
        late = (lambda: late_fields(result)) if late_fields is not None else None
        return result, save_artifact_gathered(out, result.importances, fields, late)
    if rank != 0:
        return result, None
    summary = build_summary(result.importances, **fields)
    save_artifact(out, result.importances, summary)
    return result, summary
