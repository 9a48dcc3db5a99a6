"""Peak memory per rank: one process vs two FSDP2 processes (gloo, CPU), against the memory model of docs/training.md.

    python bench/fsdp_memory.py [--model runs/offline-mini] [--records 16] [--steps 2] [--only importance|train] [--smoke]

Method
- Model: offline-mini (SmolLM2-135M-Instruct + Whisper tiny.en encoder, 148 M parameters, fp32),
  built into `runs/offline-mini` when missing; text-input QA records from data/.
- importance: `speech-llama importance` (decoder layers, batch 4) in one process and under
  `accelerate launch --config_file trainers/configs/accelerate/fsdp_cpu.yaml` (2 processes).
- training: `trainers/run.py` with the offline-mini Layer-LR and LoRA configs for `--steps` steps
  (batch 2 per process, text input, no checkpoints), one process and two FSDP processes.
- memory: each process reads its resident set after the imports (baseline) and its high-water mark
  (VmHWM) at the end; reported is peak − baseline, in MB (10^6 bytes). Under FSDP the importance
  command also splits loading from estimating (the high-water mark is reset after the shards are in
  place; `fsdp.ranks[*]` in the artifact's JSON). The model's prediction is
  `speech_llama.fsdp.memory_per_rank` (weights, gradients, AdamW moments, accumulators, gathered
  units; activations are not in it).
- allocator: every run gets `MALLOC_MMAP_THRESHOLD_=131072` and skips
  `speech_llama.memory.choose_freed_memory_policy`, so blocks above 128 KiB are mapped and returned to the
  system when freed and RSS follows the live tensors. Without that, glibc keeps freed blocks in the
  heap: FSDP2 gathers and frees each unit's parameters twice per step, and on CPU the heap keeps
  growing with those blocks (measured: +0.9 GB RSS after one forward on offline-mini, while the live
  memory is what the model says); GPU runs gather into the CUDA caching allocator instead.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_MODEL = REPO / "runs" / "offline-mini"
QA_DATA = REPO / "data" / "general_knowledge_qa.jsonl"
FSDP_CONFIG = REPO / "trainers" / "configs" / "accelerate" / "fsdp_cpu.yaml"
MB = 1e6
SMOKE_RECORDS = 4

# Runs `trainers.run.main` (argv from the command line) and writes this rank's memory to OUT.
TRAIN_WRAPPER = """
import json, sys
sys.path.insert(0, {repo!r})
from speech_llama.fsdp import peak_rss_bytes, reset_peak_rss, rss_bytes
import trainers.run
from trainers.run import main
trainers.run.choose_freed_memory_policy = lambda: None  # RSS must follow the live memory (module docstring)
baseline = rss_bytes(); reset_peak_rss()
import torch.distributed as dist
out, argv = sys.argv[1], sys.argv[2:]
main(argv)
rank = dist.get_rank() if dist.is_initialized() else 0
open(f"{{out}}.rank{{rank}}.json", "w").write(json.dumps({{"baseline_rss": baseline, "peak_rss": peak_rss_bytes()}}))
"""

# Runs the importance CLI (one process, or one rank of a launch) and writes its memory to OUT.
IMPORTANCE_WRAPPER = """
import json, sys
sys.path.insert(0, {repo!r})
from speech_llama.fsdp import peak_rss_bytes, reset_peak_rss, rss_bytes
import speech_llama.commands
from importance.cli import main
speech_llama.commands.choose_freed_memory_policy = lambda: None  # RSS must follow the live memory (module docstring)
baseline = rss_bytes(); reset_peak_rss()
out, argv = sys.argv[1], sys.argv[2:]
assert main(argv) == 0
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    open(out, "w").write(json.dumps({{"baseline_rss": baseline, "peak_rss": peak_rss_bytes()}}))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")


def fsdp_launch(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
            "--main_process_port", str(free_port()), *args]


def model_counts(model_dir: Path) -> dict[str, int]:
    """P, decoder-layer parameters, the largest decoder layer, the root unit, the embedding matrix, the
    frozen encoder, and P / trainable parameters with LoRA r=16 (adapters + the adaptor's trained copy)."""
    import torch

    from modeling_speech_llama import SpeechLlamaConfig, SpeechLlamaForCausalLM
    from trainers.lora import apply_lora, lora_config

    with torch.device("meta"):
        model = SpeechLlamaForCausalLM(SpeechLlamaConfig.from_pretrained(model_dir))
    named = dict(model.named_parameters())
    params = sum(p.numel() for p in named.values())
    decoder = sum(p.numel() for n, p in named.items() if ".layers." in n and n.startswith("language_model."))
    layers = model.config.text_config.num_hidden_layers
    encoder_layers = sum(p.numel() for n, p in named.items() if n.startswith("encoder.layers."))
    frozen = sum(p.numel() for n, p in named.items() if n.startswith("encoder."))
    root = params - decoder - encoder_layers
    with torch.device("meta"):
        lora = apply_lora(SpeechLlamaForCausalLM(SpeechLlamaConfig.from_pretrained(model_dir)), lora_config(16))
    lora_trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    embed = model.language_model.get_input_embeddings().weight.numel()
    return {"params": params, "decoder": decoder, "unit": decoder // layers, "root": root, "embed": embed, "frozen": frozen,
            "lora_params": sum(p.numel() for p in lora.parameters()), "lora_trainable": lora_trainable}


def predicted(method: str, counts: dict, ranks: int) -> float:
    from speech_llama.fsdp import memory_per_rank

    # gathered for a whole step: importance, our root unit; training, accelerate's lm_head tail
    root = counts["root"] if method == "importance" else counts["embed"]
    gathered = {"unit": counts["unit"], "root": root} if ranks > 1 else {}
    if method == "importance":
        value = memory_per_rank("importance", counts["params"], ranks, 4, analysed=counts["decoder"], **gathered)
    elif method == "lora":
        value = memory_per_rank("lora", counts["lora_params"], ranks, 4, trainable=counts["lora_trainable"], **gathered)
    else:
        value = memory_per_rank("layer_lr", counts["params"], ranks, 4, trainable=counts["params"] - counts["frozen"],
                                **gathered)
    return value["total"] / MB


def measure_importance(model: Path, work: Path, records: int) -> dict:
    common = ["importance", "--model", str(model), "--data", str(QA_DATA), "--max-samples", str(records),
              "--batch-size", "4", "--no-progress"]
    wrapper = work / "importance_wrapper.py"
    wrapper.write_text(textwrap.dedent(IMPORTANCE_WRAPPER.format(repo=str(REPO))))
    run([sys.executable, str(wrapper), str(work / "one-memory.json"), *common, "--out", str(work / "one.safetensors")])
    run(fsdp_launch(str(wrapper), str(work / "two-memory.json"), *common, "--out", str(work / "two.safetensors")))
    one = json.loads((work / "one-memory.json").read_text())
    two = json.loads((work / "two.json").read_text())["fsdp"]["ranks"]
    return {
        "one_process": (one["peak_rss"] - one["baseline_rss"]) / MB,
        "fsdp_ranks": [{"load": (r["load_peak_rss"] - r["baseline_rss"]) / MB,
                        "estimate": (r["peak_rss"] - r["baseline_rss"]) / MB,
                        "accumulator_share": r["accumulator_elements"] / json.loads((work / "two.json").read_text())["num_parameters"]}
                       for r in two],
    }


def measure_training(model: Path, work: Path, method: str, steps: int) -> dict:
    config = REPO / "trainers" / "configs" / "offline-mini" / f"{method}.yaml"
    wrapper = work / "train_wrapper.py"
    wrapper.write_text(textwrap.dedent(TRAIN_WRAPPER.format(repo=str(REPO))))
    argv = [str(config), "--model_name_or_path", str(model), "--train_data", str(QA_DATA), "--input", "text",
            "--max_train_samples", "64", "--max_steps", str(steps), "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--report_to", "none"]
    if method == "layer_lr":  # any summary with the model's layer count: memory does not depend on the rates
        from modeling_speech_llama import SpeechLlamaConfig

        layers = SpeechLlamaConfig.from_pretrained(model).text_config.num_hidden_layers
        summary = work / "layers.json"
        summary.write_text(json.dumps({"model": "bench", "input": "text", "layers": [1.0 + i for i in range(layers)]}))
        argv += ["--importance", str(summary)]
    results = {}
    for label, prefix in (("one_process", [sys.executable, str(wrapper)]), ("fsdp", fsdp_launch(str(wrapper)))):
        out = work / f"{method}-{label}"
        run([*prefix, str(out), *argv, "--output_dir", str(work / f"run-{method}-{label}")])
        ranks = sorted(work.glob(f"{method}-{label}.rank*.json"))
        results[label] = [(json.loads(p.read_text())["peak_rss"] - json.loads(p.read_text())["baseline_rss"]) / MB
                          for p in ranks]
    return results


# Llama-3.1 LLMs + the Whisper large-v3 encoder (32 layers, d 1280) + the k=5 adaptor (6400 → 2048 → d).
WHISPER_LARGE_V3_ENCODER = 636_800_000
ARCHITECTURES = {
    "8B": {"hidden": 4096, "layers": 32, "ffn": 14336, "kv": 1024, "vocab": 128256, "tied": False},
    "70B": {"hidden": 8192, "layers": 80, "ffn": 28672, "kv": 1024, "vocab": 128256, "tied": False},
}


def architecture_counts(hidden: int, layers: int, ffn: int, kv: int, vocab: int, tied: bool, lora_r: int = 16) -> dict:
    """Parameter counts of a SpeechLlama on a Llama-3.1 LLM (norms included, biases none)."""
    layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn + 2 * hidden
    embeddings = vocab * hidden * (1 if tied else 2)
    adaptor = 6400 * 2048 + 2048 + 2048 * hidden + hidden
    params = layers * layer + embeddings + hidden + WHISPER_LARGE_V3_ENCODER + adaptor
    lora = layers * lora_r * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + ffn) * 3)
    return {"params": params, "decoder": layers * layer, "unit": layer, "embed": vocab * hidden, "adaptor": adaptor,
            "frozen": WHISPER_LARGE_V3_ENCODER, "lora": lora}


def gpu_table(ranks: int = 8) -> dict:
    """GB per GPU (10^9 bytes, activations not included) for docs/training.md: bf16 weights, fp32 accumulators /
    master weights + AdamW, one process (DDP: every GPU holds this) vs FSDP2 over ``ranks`` GPUs."""
    from speech_llama.fsdp import memory_per_rank

    table = {}
    for name, shape in ARCHITECTURES.items():
        c = architecture_counts(**shape)
        root_importance = (1 if shape["tied"] else 2) * c["embed"] + c["adaptor"]  # embeddings + lm_head + adaptor
        lora_params, lora_trainable = c["params"] + c["lora"] + c["adaptor"], c["lora"] + c["adaptor"]
        rows = {
            "importance": dict(method="importance", params=c["params"], analysed=c["decoder"]),
            "full / layer_lr": dict(method="full", params=c["params"], trainable=c["params"] - c["frozen"]),
            "lora": dict(method="lora", params=lora_params, trainable=lora_trainable),
        }
        table[name] = {"params": c["params"], "analysed": c["decoder"], "unit": c["unit"]}
        for row, kwargs in rows.items():
            root = root_importance if row == "importance" else c["embed"]  # training: accelerate's lm_head tail
            one = memory_per_rank(dtype_bytes=2, ranks=1, **kwargs)["total"]
            sharded = memory_per_rank(dtype_bytes=2, ranks=ranks, unit=c["unit"], root=root, **kwargs)
            table[name][row] = {"one_process_GB": round(one / 1e9, 1), f"fsdp{ranks}_GB": round(sharded["total"] / 1e9, 1),
                                f"fsdp{ranks}_sharded_GB": round(sharded["sharded"] / 1e9, 1),
                                f"fsdp{ranks}_gathered_GB": round(sharded["gathered"] / 1e9, 1)}
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default runs/offline-mini, built when missing; "
                                                   "--smoke: tiny-random in a temporary folder)")
    parser.add_argument("--records", type=int, help=f"records for importance (default 16; --smoke: {SMOKE_RECORDS})")
    parser.add_argument("--steps", type=int, help="training steps (default 2; --smoke: 1)")
    parser.add_argument("--only", choices=("importance", "train"))
    parser.add_argument("--table", type=int, metavar="R", help="print docs/training.md's 8B / 70B table for R GPUs and exit")
    parser.add_argument("--smoke", action="store_true",
                        help="the same runs on tiny-random, 4 records, 1 step; without --only, importance and Layer-LR "
                             "training (LoRA: --only train) (for tests)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.table:
        print(json.dumps(gpu_table(args.table), indent=1))
        return
    if args.records is None:
        args.records = SMOKE_RECORDS if args.smoke else 16
    if args.steps is None:
        args.steps = 1 if args.smoke else 2
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.model is None and args.smoke:
            from speech_llama.presets import build_tiny_random

            args.model = build_tiny_random(work / "tiny-random")
        args.model = args.model or DEFAULT_MODEL
        if not (args.model / "config.json").is_file():
            from speech_llama.presets import build_offline_mini

            build_offline_mini(args.model)
        counts = model_counts(args.model)
        label = "tiny-random" if args.model == work / "tiny-random" else str(args.model)
        report: dict = {"model": label, "counts": counts}
        if args.only in (None, "importance"):
            measured = measure_importance(args.model, work, args.records)
            report["importance"] = {**measured, "model_one_process": predicted("importance", counts, 1),
                                    "model_fsdp_rank": predicted("importance", counts, 2)}
            print(json.dumps({"importance": report["importance"]}), flush=True)
        if args.only in (None, "train"):
            # --smoke: Layer-LR only (LoRA runs the same launches with another config)
            for method in ("layer_lr",) if args.smoke and args.only is None else ("layer_lr", "lora"):
                # the offline-mini LoRA config has r 16 (what model_counts assumes)
                measured = measure_training(args.model, work, method, args.steps)
                report[method] = {**measured, "model_one_process": predicted(method, counts, 1),
                                  "model_fsdp_rank": predicted(method, counts, 2)}
                print(json.dumps({method: report[method]}), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
