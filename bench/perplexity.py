"""Response perplexity, three ways side by side in one run on a model folder and spoken records:
the full (B, L, V) logits in record order (what `speech_llama.perplexity` did first), logits kept
from the first response token on in record order, and the same in batches of similar row length
(`response_perplexity` as it is now); then the last with the weights in bfloat16 (the reproduction's
inference precision), whose PPL must agree within 0.5 %.
Usage: python bench/perplexity.py [MODEL_DIR RECORDS.jsonl [N]] [--smoke] (default: bench/inference_dtype.py's
model and spoken demo questions; N records, text and speech input; --smoke: tiny-random, 4 questions with noise clips). docs/importance.md's figures are on
`make paper`'s base model and its held-out response records (runs/paper/models/base, runs/paper/data/ppl).
Last line: {"speedup_text": …, "speedup_speech": …, "length_speedup_text": …, "same_ppl": …}, each
speedup against the full-logit reference (length_speedup: by length against kept logits in order).
Target: speedup ≥ 1.2, same PPL.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from speech_llama.collate import QACollator, iterate_batches
from speech_llama.generate import load_model
from speech_llama.perplexity import response_perplexity
from speech_llama.records import load_records

from inference_dtype import default_model_dir, smoke_inputs, spoken_demo_questions  # bench/ is on sys.path as the script's folder

BATCH_SIZE = 8
SMOKE_BATCH_SIZE = 2  # --smoke: 4 records in two batches


@torch.no_grad()
def full_logit_perplexity(model, processor, records, input_kind: str, batch_size: int = BATCH_SIZE) -> float:
    total_nll, total_tokens = 0.0, 0
    for batch in iterate_batches(records, QACollator(processor, input=input_kind, max_length=512), batch_size):
        labels = batch.pop("labels")
        logits = model(**batch).logits[:, :-1].float()
        targets = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
        total_nll, total_tokens = total_nll + float(nll), total_tokens + int((targets != -100).sum())
    return math.exp(total_nll / total_tokens)


def timed(function, *args) -> tuple[float, float]:
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", type=Path, help="model folder (default: bench/inference_dtype.py's)")
    parser.add_argument("records", nargs="?", type=Path, help="spoken records .jsonl (default: the spoken demo questions)")
    parser.add_argument("n", nargs="?", type=int, default=40, help="records used (default 40)")
    parser.add_argument("--smoke", action="store_true",
                        help="the same comparison on tiny-random and 4 questions with noise clips (temporary folder), "
                             "in seconds (for tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            model_dir, data = smoke_inputs(Path(scratch))
            return compare(args.model_dir or model_dir, args.records or data, args.n, SMOKE_BATCH_SIZE)
        return compare(args.model_dir or default_model_dir(), args.records or spoken_demo_questions(), args.n)


def compare(model_dir: Path, data: Path, count: int, batch_size: int = BATCH_SIZE) -> int:
    model, processor = load_model(model_dir)
    records = load_records(data, require_audio=True, max_samples=count)
    response_perplexity(model, processor, records.select(range(min(batch_size, len(records)))), batch_size=batch_size)  # warm-up
    result = {"n": len(records), "batch_size": batch_size, "threads": torch.get_num_threads()}
    same = True
    for input_kind in ("text", "speech"):
        reference, reference_s = timed(full_logit_perplexity, model, processor, records, input_kind, batch_size)
        in_order, in_order_s = timed(lambda: response_perplexity(model, processor, records, input=input_kind,
                                                                 batch_size=batch_size, by_length=False).ppl)
        kept, kept_s = timed(lambda: response_perplexity(model, processor, records, input=input_kind,
                                                         batch_size=batch_size).ppl)
        # same mean NLL to float32 rounding (the three sum the token losses in different orders)
        same = same and all(abs(math.log(reference) - math.log(value)) <= 5e-4 for value in (in_order, kept))
        result.update({f"{input_kind}_full_s": round(reference_s, 2), f"{input_kind}_in_order_s": round(in_order_s, 2),
                       f"{input_kind}_kept_s": round(kept_s, 2),
                       f"{input_kind}_ppl": [round(reference, 5), round(in_order, 5), round(kept, 5)],
                       f"speedup_{input_kind}": round(reference_s / kept_s, 3),
                       f"length_speedup_{input_kind}": round(in_order_s / kept_s, 3)})
    bf16_model, _ = load_model(model_dir, dtype="bfloat16")
    for input_kind in ("text", "speech"):
        bf16, bf16_s = timed(lambda: response_perplexity(bf16_model, processor, records, input=input_kind,
                                                         batch_size=batch_size).ppl)
        relative = abs(bf16 / result[f"{input_kind}_ppl"][2] - 1)
        same = same and relative <= 5e-3
        result.update({f"{input_kind}_bf16_s": round(bf16_s, 2), f"{input_kind}_bf16_ppl": round(bf16, 5),
                       f"bf16_speedup_{input_kind}": round(result[f"{input_kind}_kept_s"] / bf16_s, 3),
                       f"bf16_relative_ppl_{input_kind}": round(relative, 5)})
    result.update({"same_ppl": same, "target": {"speedup": 1.2, "same_ppl": True}})
    for input_kind in ("text", "speech"):
        print(f"{input_kind}: full logits {result[f'{input_kind}_full_s']} s, kept in order {result[f'{input_kind}_in_order_s']} s, "
              f"kept by length {result[f'{input_kind}_kept_s']} s (speedup {result[f'speedup_{input_kind}']}x), "
              f"bf16 {result[f'{input_kind}_bf16_s']} s; PPL {result[f'{input_kind}_ppl']}, bf16 {result[f'{input_kind}_bf16_ppl']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
