"""`speech-llama importance`: estimate Taylor importance over a QA / instruction set → artifact.

Several CPU processes: ``accelerate launch --num_processes 2 --cpu -m importance.cli importance …``
(or ``torchrun --nproc_per_node 2 -m importance.cli importance …``); rank 0 writes the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch.distributed as dist

from speech_llama.remote_code import add_trust_argument

from .artifact import DEFAULT_PARAMS, json_path_for
from .estimate import REDUCTIONS, init_distributed, load_slice
from .pipeline import estimate_and_save


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
    parser.add_argument("--no-progress", action="store_true")
    add_trust_argument(parser)


def run(args: argparse.Namespace) -> Path:
    from speech_llama.generate import load_model

    json_path_for(args.out)  # fail on a bad name before minutes of compute
    rank, world = init_distributed()
    model, processor = load_model(args.model, trust_remote_code=args.trust_remote_code)
    records = load_slice(args.data, args.split, args.skip, args.max_samples, require_audio=args.input == "speech")
    result, summary = estimate_and_save(
        model, processor, records, args.out,
        model_name=str(args.model), data=str(args.data), input=args.input, params=args.params,
        reduction=args.reduction, batch_size=args.batch_size, max_length=args.max_length,
        rank=rank, world=world, progress=not args.no_progress, skip=args.skip,
    )
    if rank == 0:
        print(
            f"importance: {len(result.importances)} parameters ({summary['num_parameters'] / 1e6:.1f} M values), "
            f"{result.num_samples} records, {result.num_tokens} response tokens, "
            f"{result.skipped_batches} batch(es) skipped (non-finite loss), {result.seconds:.1f} s → {args.out}"
        )
    if world > 1:
        dist.barrier()  # rank 0's files exist before any rank returns
    return Path(args.out)
