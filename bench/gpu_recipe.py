"""One command for a lent GPU (≤ 10 min): the paper's real shapes in bf16 — importance against training
throughput on the same batches, peak memory, one step of every method. Writes a JSON the docs can quote.

    python bench/gpu_recipe.py [--llm llama-3.2-1b] [--out runs/gpu-recipe.json] [--batches 8] [--batch-size 4]
    python bench/gpu_recipe.py --smoke        # the same code path on the CPU at widths / 16 (for tests)

Model: `speech_llama.real_shapes` at full depth (Llama-3.2-1B: 16 decoder layers, whisper-large-v3: 32
encoder layers; `--llm llama-3.1-8b` at full depth needs ≈ 140 GB for Full-FT on one GPU: pass fewer
layers with --decoder-layers), random weights, on `cuda:0`. Batches: `--batches` × `--batch-size` records of
synthetic 4–12 s clips (16 kHz) with QA questions and 48-token responses, collated by the project's
`QACollator` (S2T prompts), the same batches for every measurement.

- importance: `importance.estimate.estimate_importance` over the decoder layers, bf16 weights, fp32
  accumulators (what `speech-llama importance --dtype bfloat16` runs); tokens/s = prompt+response tokens / s.
- training: fp32 master weights under bf16 autocast (what the trainer's `bf16: true` runs), AdamW,
  loss = mean response NLL; Full-FT (LLM + adaptor), Layer-LR (groups from the importance just measured,
  α 0.4), LoRA r 16 (+ adaptor). One warm-up step, then one timed pass over the same batches.
- peak memory: `torch.cuda.max_memory_allocated` per stage, against `speech_llama.fsdp.memory_per_rank`
  (activations are not in the model; the difference is what the activations take).

Without CUDA (and without --smoke) it stops with one line. The last line printed is the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QA_DATA = REPO / "data" / "general_knowledge_qa.jsonl"
GB = 1e9
SMOKE = {"scale": 16, "decoder_layers": 2, "encoder_layers": 1, "batches": 2, "batch_size": 2}


def refuse_without_cuda(smoke: bool) -> None:
    import torch

    if not smoke and not torch.cuda.is_available():
        print("bench/gpu_recipe.py: no CUDA device here; run it on a lent GPU (or --smoke for the CPU code path)",
              file=sys.stderr)
        raise SystemExit(2)


def build(llm: str, decoder_layers: int | None, encoder_layers: int | None, scale: int):
    """(model in fp32 on the CPU, processor): the shape-faithful model composed in memory (nothing saved)."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from speech_llama.build import compose
    from speech_llama.offline.smollm2 import smollm2_dir
    from speech_llama.real_shapes import ADAPTOR, shape_faithful_parts

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    encoder, language_model = shape_faithful_parts(llm, decoder_layers, encoder_layers, scale)
    language_model.resize_token_embeddings(max(language_model.config.vocab_size + 1, len(tokenizer) + 1),
                                           mean_resizing=False)
    features = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins)
    return compose(encoder, language_model, tokenizer, features, **ADAPTOR)


def make_batches(processor, folder: Path, batches: int, batch_size: int) -> list[dict]:
    """Collated S2T batches (input_ids, attention_mask, labels (B, L); input_features (B, mels, T))."""
    import numpy as np
    import soundfile as sf

    from importance.estimate import sharded_batches
    from speech_llama.collate import QACollator
    from speech_llama.records import load_records

    rng = np.random.default_rng(0)
    questions = [json.loads(line) for line in QA_DATA.read_text().splitlines() if line.strip()]
    lines = []
    for index in range(batches * batch_size):
        seconds = 4 + 8 * rng.random()
        t = np.arange(int(16_000 * seconds)) / 16_000
        sf.write(folder / f"clip{index}.wav", (0.1 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size))
                 .astype(np.float32), 16_000)
        record = questions[index % len(questions)]
        response = " ".join(["The answer is", *record["answers"][:1]] * 8)  # ≈ 48 tokens of response
        lines.append(json.dumps({"question": record["question"], "response": response, "audio": f"clip{index}.wav"}))
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")
    records = load_records(folder / "records.jsonl", require_audio=True)
    collator = QACollator(processor, input="speech", max_length=1024)
    return [batch for _, _, batch in sharded_batches(records, collator, batch_size)]


def tokens_of(batches: list[dict]) -> int:
    return int(sum(int(batch["attention_mask"].sum()) for batch in batches))


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device) -> int:
    import torch

    from speech_llama.fsdp import peak_rss_bytes

    return torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_importance(model, batches: list[dict], device, dtype) -> dict:
    """Importance of the decoder layers over the batches (weights in ``dtype``, fp32 accumulators)."""
    from importance.estimate import estimate_importance, select_parameters
    from importance.artifact import summarize

    model.to(device=device, dtype=dtype)
    params = select_parameters(model)
    reset_peak(device)
    started = time.perf_counter()
    result = estimate_importance(model, ((i, len(b["input_ids"]), b) for i, b in enumerate(batches)), params)
    synchronize(device)
    seconds = time.perf_counter() - started
    layers = summarize(result.importances, model.config.text_config.num_hidden_layers)["layers"]
    return {"s": round(seconds, 2), "tokens_per_s": round(tokens_of(batches) / seconds, 1),
            "peak_GB": round(peak_bytes(device) / GB, 2), "layers": layers, "analysed": sum(p.numel() for p in params.values())}


def optimizer_for(model, method: str, layers: list[float], lr: float = 2e-5):
    """AdamW over the method's trainable parameters (Layer-LR: one group per decoder layer at c_l · lr)."""
    import torch

    from trainers.layer_lr import build_param_groups, layer_coefficients

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    coefficients = layer_coefficients(layers, 0.4) if method == "layer_lr" else None
    groups = build_param_groups(named, [name for name, p in named if p.ndim > 1], lr, 0.0, coefficients)
    return torch.optim.AdamW(groups, lr=lr), sum(p.numel() for _, p in named)


def training_step(model, optimizer, batch: dict, device, autocast: bool) -> float:
    import torch

    from speech_llama.perplexity import response_nll

    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
        loss_sum, tokens = response_nll(model, batch)
    loss = loss_sum / max(tokens, 1)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def measure_training(base_state: dict, make_model, method: str, batches: list[dict], layers: list[float], device,
                     autocast: bool) -> dict:
    """A fresh fp32 model (from ``base_state``) trained by ``method``: a warm-up step, then one timed pass."""
    from trainers.lora import apply_lora, lora_config

    model = make_model()
    model.load_state_dict(base_state)
    model.encoder.requires_grad_(False)
    if method == "lora":
        model = apply_lora(model, lora_config(16))
    model.to(device).train()
    optimizer, trainable = optimizer_for(model, method, layers)
    reset_peak(device)
    losses = [training_step(model, optimizer, batches[0], device, autocast)]
    synchronize(device)
    started = time.perf_counter()
    losses += [training_step(model, optimizer, batch, device, autocast) for batch in batches]
    synchronize(device)
    seconds = time.perf_counter() - started
    figures = {"s": round(seconds, 2), "tokens_per_s": round(tokens_of(batches) / seconds, 1),
               "peak_GB": round(peak_bytes(device) / GB, 2), "trainable": trainable, "losses": [round(x, 4) for x in losses]}
    del model, optimizer
    return figures


def predicted_GB(counts, method: str) -> float:
    from speech_llama.real_shapes import predicted_memory

    return round(predicted_memory(counts, method, 1, 2 if method == "importance" else 4)["total"] / GB, 2)


def run(args: argparse.Namespace) -> dict:
    import math

    import torch

    from modeling_speech_llama import SpeechLlamaForCausalLM
    from speech_llama.real_shapes import encoder_config, llm_config, parameter_counts

    device = torch.device("cuda", 0) if torch.cuda.is_available() and not args.smoke else torch.device("cpu")
    scale = SMOKE["scale"] if args.smoke else 1
    started = time.perf_counter()
    model, processor = build(args.llm, args.decoder_layers, args.encoder_layers, scale)
    rows = model.language_model.get_input_embeddings().num_embeddings
    counts = parameter_counts(llm_config(args.llm, args.decoder_layers, scale), encoder_config(args.encoder_layers, scale),
                              vocab_rows=rows)
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "llm": args.llm,
              "scale": scale, "params": counts.params, "decoder_layers": model.config.text_config.num_hidden_layers,
              "encoder_layers": model.config.encoder_config.encoder_layers, "build_s": round(time.perf_counter() - started, 1)}
    with tempfile.TemporaryDirectory() as folder:
        batches = make_batches(processor, Path(folder), args.batches, args.batch_size)
    report["batches"] = {"count": len(batches), "batch_size": args.batch_size, "tokens": tokens_of(batches),
                         "shapes": {key: list(value.shape) for key, value in batches[0].items()}}
    base_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = model.config
    report["importance"] = measure_importance(model, batches, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    report["importance"]["model_GB"] = predicted_GB(counts, "importance")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    autocast = device.type == "cuda"
    report["train"] = {}
    for method in ("full", "layer_lr", "lora"):
        figures = measure_training(base_state, lambda: SpeechLlamaForCausalLM(config), method, batches,
                                   report["importance"]["layers"], device, autocast)
        figures["model_GB"] = predicted_GB(counts, method)
        figures["importance_speedup"] = round(report["importance"]["tokens_per_s"] / figures["tokens_per_s"], 2)
        report["train"][method] = figures
        print(f"{method}: {json.dumps(figures)}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["ok"] = all(math.isfinite(x) for figures in report["train"].values() for x in figures["losses"]) and all(
        math.isfinite(x) for x in report["importance"]["layers"])
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default="llama-3.2-1b", choices=("llama-3.2-1b", "llama-3.1-8b"))
    parser.add_argument("--decoder-layers", type=int, help="decoder layers (default: all of the LLM's)")
    parser.add_argument("--encoder-layers", type=int, help="Whisper encoder layers (default: all 32)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-recipe.json", help="where the JSON is written")
    parser.add_argument("--smoke", action="store_true", help="CPU, widths / 16, 2 decoder + 1 encoder layers, 2 batches of 2")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    refuse_without_cuda(args.smoke)
    if args.smoke:
        args.decoder_layers, args.encoder_layers = SMOKE["decoder_layers"], SMOKE["encoder_layers"]
        args.batches, args.batch_size = SMOKE["batches"], SMOKE["batch_size"]
    for name in ("decoder_layers", "encoder_layers", "batches", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"bench/gpu_recipe.py: --{name.replace('_', '-')} must be 1 or more, got {value}")
    report = run(args)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"written: {args.out}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
