"""`speech-llama importance`: estimate Taylor importance over a QA / instruction set → artifact.

Several CPU processes: ``accelerate launch --num_processes 2 --cpu -m importance.cli importance …``
(or ``torchrun --nproc_per_node 2 -m importance.cli importance …``); rank 0 writes the files.

Sharded (FSDP2): ``accelerate launch --config_file trainers/configs/accelerate/fsdp.yaml -m importance.cli
importance …`` (``fsdp_cpu.yaml``: two CPU processes, gloo). Each rank holds 1/R of the weights and
of the fp32 accumulators; the artifact is gathered one tensor at a time. The summary's ``fsdp`` field
records the units and, per rank, the accumulator elements and the peak memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from speech_llama.build import DTYPES
from speech_llama.remote_code import add_trust_argument

from .artifact import DEFAULT_PARAMS, json_path_for
from .estimate import REDUCTIONS, init_distributed, load_slice
from .pipeline import estimate_and_save

# float64: for checks that must not depend on float32 summation order (the accumulators stay float32).
LOAD_DTYPES = {**DTYPES, "float64": torch.float64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (speech-llama build)")
    parser.add_argument("--data", required=True, help="records: .jsonl, a save_to_disk folder or a Hub id")
    parser.add_argument("--split", default="test", help="split of a DatasetDict folder / Hub dataset")
    parser.add_argument("--input", choices=("text", "speech"), default="text", help="question as text (T2T) or audio (S2T)")
    parser.add_argument("--out", required=True, type=Path, help="X.safetensors (X.json is written beside it)")
    parser.add_argument("--skip", type=int, default=0, help="drop the first N records (e.g. those another command used)")
    parser.add_argument("--max-samples", type=int, help="use the first N records")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512, help="tokens per row (the response is cut, never the prompt)")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="regex over parameter names (default: the LLM's decoder layers)")
    parser.add_argument("--reduction", choices=REDUCTIONS, default="mean", help="mean: |θ·∇L(D)| (Eq. 2); abs_per_batch: Σ_b |θ·g_b|")
    parser.add_argument("--dtype", choices=tuple(LOAD_DTYPES), default="float32",
                        help="dtype the weights are loaded in (the accumulators are always float32)")
    parser.add_argument("--no-progress", action="store_true")
    add_trust_argument(parser)


def run(args: argparse.Namespace) -> Path:
    from speech_llama.fsdp import fsdp_settings

    json_path_for(args.out)  # fail on a bad name before minutes of compute
    settings = fsdp_settings()
    if settings is not None:
        return run_sharded(args, settings)
    from speech_llama.generate import load_model

    rank, world = init_distributed()
    model, processor = load_model(args.model, dtype=LOAD_DTYPES[args.dtype], trust_remote_code=args.trust_remote_code)
    records = load_slice(args.data, args.split, args.skip, args.max_samples, require_audio=args.input == "speech")
    result, summary = estimate(args, model, processor, records, rank, world)
    if rank == 0:
        report(result, summary, args.out)
    if world > 1:
        dist.barrier()  # rank 0's files exist before any rank returns
    return Path(args.out)


def run_sharded(args: argparse.Namespace, settings) -> Path:
    """The FSDP2 path: shard the model over the launcher's processes, estimate, write gathered."""
    from speech_llama.fsdp import init_fsdp_process_group, load_sharded_model, peak_rss_bytes, reset_peak_rss, rss_bytes

    rank, world = init_fsdp_process_group()
    baseline = rss_bytes()
    # Records first: a bad source fails before the weights are read.
    records = load_slice(args.data, args.split, args.skip, args.max_samples, require_audio=args.input == "speech")
    model, processor, units = load_sharded_model(args.model, settings, LOAD_DTYPES[args.dtype], args.trust_remote_code)
    load_peak = peak_rss_bytes()
    reset_peak_rss()  # from here on the peak is the estimate's (and the gathered write's)

    def late_fields(result) -> dict:
        mine = {"accumulator_elements": result.local_elements, "baseline_rss": baseline,
                "load_peak_rss": load_peak, "peak_rss": peak_rss_bytes()}
        if torch.cuda.is_available():
            mine["peak_device_bytes"] = torch.cuda.max_memory_allocated()
        ranks: list = [None] * world
        dist.all_gather_object(ranks, mine)
        return {"fsdp": {"version": settings.version, "units": len(units),
                         "unit_classes": sorted(set(units.values())),
                         "mixed_precision": settings.mixed_precision,
                         "cpu_ram_efficient_loading": settings.cpu_ram_efficient_loading, "ranks": ranks}}

    result, summary = estimate(args, model, processor, records, rank, world, late_fields=late_fields)
    if rank == 0:
        report(result, summary, args.out)
        shares = ", ".join(f"{entry['accumulator_elements'] / summary['num_parameters']:.3f}" for entry in summary["fsdp"]["ranks"])
        print(f"importance: FSDP2 over {world} processes, {len(units)} units; accumulator share per rank: {shares}")
    dist.barrier()
    return Path(args.out)


def estimate(args: argparse.Namespace, model, processor, records, rank: int, world: int, **extra):
    """`estimate_and_save` with the command's options: (result, summary)."""
    return estimate_and_save(
        model, processor, records, args.out,
        model_name=str(args.model), data=str(args.data), input=args.input, params=args.params,
        reduction=args.reduction, batch_size=args.batch_size, max_length=args.max_length,
        rank=rank, world=world, progress=not args.no_progress, skip=args.skip, dtype=args.dtype, **extra,
    )


def report(result, summary: dict, out: Path) -> None:
    print(
        f"importance: {len(result.importances)} parameters ({summary['num_parameters'] / 1e6:.1f} M values), "
        f"{result.num_samples} records, {result.num_tokens} response tokens, "
        f"{result.skipped_batches} batch(es) skipped (non-finite loss), {result.seconds:.1f} s → {out}"
    )
