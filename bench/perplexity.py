"""Response perplexity, three ways side by side in one run on a model folder and spoken records:
the full (B, L, V) logits in record order (what `speech_llama.perplexity` did first), logits kept
from the first response token on in record order, and the same in batches of similar row length
(`response_perplexity` as it is now); then the last with the weights in bfloat16 (the reproduction's
inference precision), whose PPL must agree within 0.5 %.
Usage: python bench/perplexity.py [MODEL_DIR RECORDS.jsonl [N]] (default: bench/inference_dtype.py's
model and spoken demo questions; N records, text and speech input). The README's figures are on
`make paper`'s base model and its held-out response records (runs/paper/models/base, runs/paper/data/ppl).
Last line: {"speedup_text": …, "speedup_speech": …, "length_speedup_text": …, "same_ppl": …}, each
speedup against the full-logit reference (length_speedup: by length against kept logits in order).
Target: speedup ≥ 1.2, same PPL.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from speech_llama.collate import QACollator, iterate_batches
from speech_llama.generate import load_model
from speech_llama.perplexity import response_perplexity
from speech_llama.records import load_records

from inference_dtype import default_model_dir, spoken_demo_questions  # bench/ is on sys.path as the script's folder

BATCH_SIZE = 8


@torch.no_grad()
def full_logit_perplexity(model, processor, records, input_kind: str) -> float:
    total_nll, total_tokens = 0.0, 0
    for batch in iterate_batches(records, QACollator(processor, input=input_kind, max_length=512), BATCH_SIZE):
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


def main() -> int:
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_dir()
    data = Path(sys.argv[2]) if len(sys.argv) > 2 else spoken_demo_questions()
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    model, processor = load_model(model_dir)
    records = load_records(data, require_audio=True, max_samples=count)
    response_perplexity(model, processor, records.select(range(BATCH_SIZE)), batch_size=BATCH_SIZE)  # warm-up
    result = {"n": len(records), "batch_size": BATCH_SIZE, "threads": torch.get_num_threads()}
    same = True
    for input_kind in ("text", "speech"):
        reference, reference_s = timed(full_logit_perplexity, model, processor, records, input_kind)
        in_order, in_order_s = timed(lambda: response_perplexity(model, processor, records, input=input_kind,
                                                                 batch_size=BATCH_SIZE, by_length=False).ppl)
        kept, kept_s = timed(lambda: response_perplexity(model, processor, records, input=input_kind,
                                                         batch_size=BATCH_SIZE).ppl)
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
                                                         batch_size=BATCH_SIZE).ppl)
        relative = abs(bf16 / result[f"{input_kind}_ppl"][2] - 1)
        same = same and relative <= 5e-3
        result.update({f"{input_kind}_bf16_s": round(bf16_s, 2), f"{input_kind}_bf16_ppl": round(bf16, 5),
                       f"bf16_speedup_{input_kind}": round(result[f"{input_kind}_kept_s"] / bf16_s, 3),
                       f"bf16_relative_ppl_{input_kind}": round(relative, 5)})
    result.update({"same_ppl": same, "target": {"speedup": 1.2, "same_ppl": True}})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
