"""Overhead of importance estimation over a plain forward/backward, on the same batches.

    python bench/importance_overhead.py [--model runs/offline-mini] [--batches 3] [--batch-size 4] [--rounds 3] [--smoke]

Method
- Model: the given folder (default `runs/offline-mini` when it exists), else a mid-size random
  LLaMA (8 layers, hidden 512, vocab 32 000) built in memory. Analysed set: the decoder layers
  (the engine's default); in both modes only those parameters require grad.
- plain step: forward, backward of the summed response NLL (gradients land in `.grad`), then
  `.grad = None` (what a training step costs before the optimizer).
- importance: `estimate_importance` over the same batches (hooks accumulate θ·g in fp32 and free
  each gradient at once; includes allocating the accumulators and the final division).
- time: in one process, each batch is run as an adjacent pair (plain step, importance step; the
  order alternates), `--rounds` times over the batches, so load drift on a shared machine hits both
  members of a pair; time_ratio = median over pairs of t_importance / t_plain (the ratio of the
  summed times is reported too). The importance step here is the accumulator-hook step without the
  per-run setup (allocating accumulators, the final division), which the memory runs do include.
- memory: each mode runs in its own subprocess; after loading the model and one warm-up step the
  resident-set high-water mark is reset (`/proc/self/clear_refs` ← 5) and `VmHWM` is read after the
  measured steps (falls back to `ru_maxrss` where clear_refs is unavailable; `torch.cuda` peak
  statistics on a GPU). memory_ratio = (peak_importance − peak_plain) / fp32 bytes of the analysed
  parameters: the extra memory per analysed fp32 byte (target ≤ 1.10; the accumulator alone is 1).

- hook_arithmetic_seconds: the hooks' multiply-adds alone, timed in isolation (fastest of 5); divided
  by the fastest plain step it bounds the overhead without the noise of a shared machine.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without reinstalling

from importance.estimate import (  # noqa: E402
    ImportanceAccumulator,
    analysed_only,
    estimate_importance,
    select_parameters,
)
from speech_llama.perplexity import response_nll  # noqa: E402

DEFAULT_MODEL = REPO / "runs" / "offline-mini"
QA_DATA = REPO / "data" / "general_knowledge_qa.jsonl"
RANDOM_LLAMA_PARAMS = r"^model\.layers\."
VOCAB = 32000


def load(model_arg: str | None, device: str, smoke: bool = False):
    """(model, analysed params) — the model folder, or a random mid-size LLaMA (--smoke: a tiny one)."""
    if not smoke and model_arg != "random" and Path(model_arg or DEFAULT_MODEL).is_dir():
        from speech_llama.generate import load_model

        model, processor = load_model(model_arg or DEFAULT_MODEL)
        model.to(device)
        return model, processor, select_parameters(model)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True)
    if smoke:
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(device).eval()
    return model, None, select_parameters(model, RANDOM_LLAMA_PARAMS)


def model_label(args) -> str:
    if args.smoke:
        return "random-llama-2x64 (smoke)"
    if args.model != "random" and Path(args.model or DEFAULT_MODEL).is_dir():
        return str(args.model or DEFAULT_MODEL)
    return "random-llama-8x512"


def make_batches(processor, count: int, batch_size: int) -> list[tuple[int, int, dict]]:
    """QA batches through the project collator, or random token rows (64 tokens, last 16 labelled)."""
    if processor is not None:
        from importance.estimate import sharded_batches
        from speech_llama.collate import QACollator
        from speech_llama.records import load_records

        records = load_records(QA_DATA, max_samples=count * batch_size)
        return list(sharded_batches(records, QACollator(processor, input="text"), batch_size))
    generator = torch.Generator().manual_seed(0)
    batches = []
    for index in range(count):
        input_ids = torch.randint(0, VOCAB, (batch_size, 64), generator=generator)
        labels = torch.full_like(input_ids, -100)
        labels[:, -16:] = input_ids[:, -16:]
        batches.append((index, batch_size, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}))
    return batches


def plain_steps(model, batches, params) -> None:
    with analysed_only(model, params):
        for _, _, batch in batches:
            loss_sum, _ = response_nll(model, batch)
            loss_sum.backward()
            for param in params.values():
                param.grad = None


def importance_steps(model, batches, params) -> None:
    estimate_importance(model, batches, params)


MODES = {"plain": plain_steps, "importance": importance_steps}


# --- memory (one subprocess per mode) ------------------------------------------------------


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset_worked: bool) -> int:
    if reset_worked:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_memory(args) -> None:
    """Child process: one mode, print its peak memory (bytes) as JSON."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor, params = load(args.model, device, args.smoke)
    batches = make_batches(processor, args.batches, args.batch_size)
    MODES[args.measure](model, batches[:1], params)  # warm-up: lazy allocations, thread pools
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        MODES[args.measure](model, batches, params)
        torch.cuda.synchronize()
        print(json.dumps({"peak": torch.cuda.max_memory_allocated(), "method": "torch.cuda.max_memory_allocated"}))
        return
    reset_worked = _reset_peak()
    MODES[args.measure](model, batches, params)
    method = "VmHWM after clear_refs" if reset_worked else "ru_maxrss"
    print(json.dumps({"peak": _peak_bytes(reset_worked), "method": method}))


def child_peak(mode: str, args) -> dict:
    command = [sys.executable, __file__, "--measure", mode, "--batches", str(args.batches), "--batch-size", str(args.batch_size)]
    if args.model:
        command += ["--model", args.model]
    if args.smoke:
        command += ["--smoke"]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"memory child ({mode}) failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --- time (both modes in this process) -----------------------------------------------------


def _one_step(model, batch) -> None:
    loss_sum, _ = response_nll(model, batch)
    loss_sum.backward()


def measure_time(model, batches, params, rounds: int) -> dict[str, list[float]]:
    """Per-step seconds of both modes, as adjacent pairs on the same batch (order alternating),
    so that load changes on a shared machine hit both members of a pair alike.

    The importance step is the engine's own: the `ImportanceAccumulator` hooks (registered for
    the step) add θ·g into the fp32 accumulators and free each gradient; the plain step leaves
    the gradients in `.grad` and drops them afterwards (`.grad = None`, no optimizer).
    """
    accumulator = ImportanceAccumulator(params, "mean")
    seconds = {"plain": [], "importance": []}

    def plain(batch):
        _one_step(model, batch)
        for param in params.values():
            param.grad = None

    def importance(batch):
        with accumulator:
            _one_step(model, batch)

    steps = {"plain": plain, "importance": importance}
    with analysed_only(model, params):
        for mode in steps:  # warm-up: first-touch allocations, thread pools
            steps[mode](batches[0][2])
        pair = 0
        for _ in range(rounds):
            for _, _, batch in batches:
                order = ("plain", "importance") if pair % 2 == 0 else ("importance", "plain")
                for mode in order:
                    started = time.perf_counter()
                    steps[mode](batch)
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    seconds[mode].append(time.perf_counter() - started)
                pair += 1
    return seconds


def hook_arithmetic_seconds(params, repeats: int = 5) -> float:
    """Fastest of `repeats` runs of the hooks' arithmetic alone (one fused θ·g multiply-add per
    analysed parameter, the parameter standing in for its gradient): a load-robust estimate of
    what the hooks add to a step."""
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            for name, param in params.items():
                sums[name].addcmul_(param, param)
            best = min(best, time.perf_counter() - started)
    return best


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder, or 'random' (default: runs/offline-mini if built, else random)")
    parser.add_argument("--batches", type=int, help="default 3 (--smoke: 2)")
    parser.add_argument("--batch-size", type=int, help="default 4 (--smoke: 2)")
    parser.add_argument("--rounds", type=int, help="default 3 (--smoke: 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="the same measurements on a tiny random LLaMA (2 layers, hidden 64), in seconds (for tests)")
    parser.add_argument("--measure", choices=sorted(MODES), help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    for name, full, smoke in (("batches", 3, 2), ("batch_size", 4, 2), ("rounds", 3, 2)):
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.measure:
        measure_memory(args)
        return

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor, params = load(args.model, device, args.smoke)
    batches = make_batches(processor, args.batches, args.batch_size)
    analysed_bytes = 4 * sum(p.numel() for p in params.values())
    seconds = measure_time(model, batches, params, args.rounds)
    hook_seconds = hook_arithmetic_seconds(params)
    del model
    peaks = {mode: child_peak(mode, args) for mode in MODES}
    tokens = sum(int(batch["attention_mask"].sum()) for _, _, batch in batches) * args.rounds
    plain, importance = sum(seconds["plain"]), sum(seconds["importance"])
    paired = [i / p for i, p in zip(seconds["importance"], seconds["plain"])]
    report = {
        "time_ratio": statistics.median(paired),
        "memory_ratio": (peaks["importance"]["peak"] - peaks["plain"]["peak"]) / analysed_bytes,
        "model": model_label(args),
        "device": device,
        "analysed_parameters": analysed_bytes // 4,
        "analysed_fp32_bytes": analysed_bytes,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "time_ratio_of_sums": importance / plain,
        "hook_arithmetic_seconds": hook_seconds,
        "hook_share_of_fastest_plain_step": hook_seconds / min(seconds["plain"]),
        "time_ratio_pairs": paired,
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "seconds_plain": seconds["plain"],
        "seconds_importance": seconds["importance"],
        "tokens_per_s_plain": tokens / plain,
        "tokens_per_s_importance": tokens / importance,
        "peak_bytes_plain": peaks["plain"]["peak"],
        "peak_bytes_importance": peaks["importance"]["peak"],
        "memory_method": peaks["plain"]["method"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
