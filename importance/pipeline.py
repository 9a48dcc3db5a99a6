"""One importance run, end to end: records → batches → estimate → summary → artifact.

The `importance` command (`cli_importance`) and the Space's default content
(`spaces_demo.content`) both call :func:`estimate_and_save`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

from .artifact import DEFAULT_PARAMS, build_summary, save_artifact
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
        rank, world: this process and the number of processes (each takes batches i ≡ rank mod world).
        extra: more summary fields (e.g. ``skip``).
    Returns:
        (the estimate, the summary written — None on ranks other than 0).
    """
    from speech_llama.collate import QACollator

    collator = QACollator(processor, input=input, max_length=max_length)
    total = len(range(rank, math.ceil(len(records) / batch_size), world))
    batches = sharded_batches(records, collator, batch_size, rank, world)
    if wrap_batches is not None:
        batches = wrap_batches(batches, total)
    result = estimate_importance(model, batches, select_parameters(model, params), reduction=reduction,
                                 progress=progress, total_batches=total)
    if rank != 0:
        return result, None
    summary = build_summary(
        result.importances,
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
    save_artifact(out, result.importances, summary)
    return result, summary
