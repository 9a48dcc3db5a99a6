"""`speech-llama deactivate`: perplexity with the top / bottom / random fraction of analysed
parameters zeroed (the seed paper's Table 1), weights restored after each condition."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from speech_llama.files import atomic_write_json
from speech_llama.generate import add_dtype_argument
from speech_llama.remote_code import add_trust_argument

from .artifact import check_against_model, load_artifact
from .deactivate import build_selection, zeroed
from .estimate import load_slice

CONDITIONS = ("top", "bottom", "random")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (speech-llama build)")
    parser.add_argument("--importance", required=True, type=Path, help="X.safetensors from `speech-llama importance`")
    parser.add_argument("--data", required=True, help="records to measure perplexity on (held out from the importance data)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--input", choices=("text", "speech"), default="text")
    parser.add_argument("--fraction", type=float, default=0.03, help="share of the analysed parameters to zero")
    parser.add_argument("--selection", choices=("global", "per_matrix"), default="global")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random condition")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip", type=int, default=0, help="drop the first N records (e.g. those another command used)")
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", required=True, type=Path, help="R.json")
    parser.add_argument("--no-progress", action="store_true")
    add_dtype_argument(parser)
    add_trust_argument(parser)


def deactivation_table(model, processor, importances, records, args) -> dict[str, Any]:
    """PPL of the intact model and of each zeroed condition; counts of zeroed entries."""
    from speech_llama.perplexity import response_perplexity

    def perplexity():
        return response_perplexity(
            model, processor, records, input=args.input, batch_size=args.batch_size,
            max_length=args.max_length, progress=not args.no_progress,
        )

    base = perplexity()
    ppl, nll, counts = {"base": base.ppl}, {"base": base.nll}, {}
    for kind in CONDITIONS:
        selection = build_selection(importances, args.fraction, kind, args.selection, args.seed)
        with zeroed(model, selection) as saved:
            result = perplexity()
        ppl[kind], nll[kind], counts[kind] = result.ppl, result.nll, saved.count
        print(f"deactivate: {kind:>6} {saved.count} zeroed → PPL {result.ppl:.3f} (base {base.ppl:.3f})")
    return {"ppl": ppl, "nll": nll, "counts": counts, "tokens": base.tokens}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from speech_llama.generate import load_model

    started = time.perf_counter()
    artifact = load_artifact(args.importance)
    model, processor = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    check_against_model(artifact.shapes, model, where=str(args.importance), summary=artifact.summary)
    importances = artifact.load_all()
    records = load_slice(args.data, args.split, args.skip, args.max_samples, require_audio=args.input == "speech")
    table = deactivation_table(model, processor, importances, records, args)
    total = sum(tensor.numel() for tensor in importances.values())
    report = {
        "fraction": args.fraction,
        "selection": args.selection,
        "input": args.input,
        "ppl": table["ppl"],
        "ratio": {kind: table["ppl"][kind] / table["ppl"]["base"] for kind in CONDITIONS},
        "nll": table["nll"],
        "counts": {**table["counts"], "analysed": total},
        "seed": args.seed,
        "dtype": args.dtype,
        "num_samples": len(records),
        "num_tokens": table["tokens"],
        "model": str(args.model),
        "importance": str(args.importance),
        "importance_input": artifact.summary.get("input"),
        "data": str(args.data),
        "skip": args.skip,
        "seconds": round(time.perf_counter() - started, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(args.out, report)
    print(f"deactivate: wrote {args.out}")
    return report
