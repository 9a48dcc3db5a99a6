"""A shape-faithful dry run on CPU: the paper's Llama-3.2-1B + whisper-large-v3 shapes, random weights,
through every stage the GPU run takes — before a GPU is lent.

    python bench/real_shapes.py [--llm llama-3.2-1b] [--decoder-layers 2] [--encoder-layers 2]
                                [--records 4] [--steps 2] [--smoke]

Every matrix has its real shape — embeddings 128 257 × 2048 (128 256 + `<speech>`, tied), q 2048 × 2048,
k / v 512 × 2048 (GQA, 8 KV heads), MLP 8192 × 2048, RoPE θ 500 000 with llama3 scaling; Whisper conv1
over 128 mel bins, d_model 1280, FFN 5120; adaptor 6400 → 2048 → 2048 — only the *number* of decoder /
encoder layers is cut (2 of 16, 2 of 32 by default) so two FSDP processes fit a 2-core machine's memory; the
output says so. The tokenizer is SmolLM2's (Llama-3's is not offline): rows past its 49 153 tokens stay in
the matrices but are zeroed, so greedy decoding never picks a token the tokenizer cannot print.

Stages: build (compose + save_pretrained) → load back through the Auto classes (remote code) and compare
logits → text and speech importance (`speech-llama importance`) → Table 1 on a few samples
(`speech-llama deactivate`) → a batched S2T eval of a few clips (`speech-llama eval`) → two training steps of
Full-FT, Layer-LR (its rates from the text importance just measured) and LoRA under 2-process FSDP2
(`accelerate launch --config_file trainers/configs/accelerate/fsdp_cpu.yaml`, gloo) → the trained Full-FT
folder loaded through the Auto classes.

Memory: each training rank's peak RSS minus its RSS after imports, against `speech_llama.fsdp.memory_per_rank`
at these counts (fp32: b = 4) plus what rank 0 alone holds (the full weights it reads and broadcasts, and the
gathered state dict it writes as final/: b·P; LoRA also loads a second base copy to merge: + b·P).
Tolerance: measured ≤ 1.3 × predicted + 0.75 GB — activations are not in the model (0.2–0.7 GB measured on
offline-mini, docs/training.md) and the runtime's own allocations vary. The last line is one JSON object,
``"ok": true|false``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FSDP_CONFIG = REPO / "trainers" / "configs" / "accelerate" / "fsdp_cpu.yaml"
QA_DATA = REPO / "data" / "general_knowledge_qa.jsonl"
METHODS = ("full", "layer_lr", "lora")
MB = 1e6
TOLERANCE = {"factor": 1.3, "plus_bytes": 750_000_000}
SMOKE_SCALE = 16  # --smoke: every width / 16 (the same structure, seconds instead of minutes)


# --- build ------------------------------------------------------------------------------------------------------


def build_model(out: Path, llm: str, decoder_layers: int, encoder_layers: int, scale: int) -> dict:
    """Compose the shape-faithful model and save it as a complete folder; returns what was built.

    Embedding rows: max(vocab + 1, tokenizer) — 128 257 at scale 1, as `compose` resizes Llama-3's
    128 256-token vocabulary for `<speech>`; rows the SmolLM2 tokenizer cannot print are zeroed.
    """
    import torch
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from speech_llama.build import BuildInfo, compose, save_model_folder
    from speech_llama.offline.smollm2 import smollm2_dir
    from speech_llama.real_shapes import ADAPTOR, LLMS, WHISPER_LARGE_V3, shape_faithful_parts

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    encoder, language_model = shape_faithful_parts(llm, decoder_layers, encoder_layers, scale)
    rows = max(language_model.config.vocab_size + 1, len(tokenizer) + 1)
    language_model.resize_token_embeddings(rows, mean_resizing=False)
    language_model.generation_config.eos_token_id = tokenizer.eos_token_id
    printable = len(tokenizer) + 1  # the tokenizer's tokens and the `<speech>` token compose adds
    with torch.no_grad():
        language_model.get_input_embeddings().weight[printable:] = 0
        if not language_model.config.tie_word_embeddings:
            language_model.get_output_embeddings().weight[printable:] = 0
    features = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins)
    model, processor = compose(encoder, language_model, tokenizer, features, **ADAPTOR)
    info = BuildInfo(llm=f"{LLMS[llm]['hub_id']} shapes, random weights ({decoder_layers} decoder layers)",
                     encoder=f"{WHISPER_LARGE_V3['hub_id']} shapes, random weights ({encoder_layers} layers)",
                     preset="real-shapes", notes=["Random weights at real shapes: for bench/real_shapes.py only."])
    save_model_folder(model, processor, out, info)
    return {"rows": rows, "printable_rows": printable, "build_s": round(time.perf_counter() - started, 1),
            "folder_MB": round(sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / MB, 1)}


def shapes_of(model_dir: Path) -> dict:
    """The matrix shapes that make the run shape-faithful (read from the saved folder)."""
    from safetensors import safe_open

    wanted = {"embed": "language_model.model.embed_tokens.weight", "q": "language_model.model.layers.0.self_attn.q_proj.weight",
              "k": "language_model.model.layers.0.self_attn.k_proj.weight",
              "gate": "language_model.model.layers.0.mlp.gate_proj.weight", "conv1": "encoder.conv1.weight",
              "encoder_fc1": "encoder.layers.0.fc1.weight", "adaptor_in": "adaptor.linear_1.weight"}
    shapes = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            for label, key in wanted.items():
                if key in keys:
                    shapes[label] = list(handle.get_slice(key).get_shape())
    return shapes


def auto_roundtrip(model_dir: Path) -> dict:
    """Load through AutoModelForCausalLM / AutoProcessor (remote code); logits of one typed question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}],
                                           add_generation_prompt=True)
    inputs = processor(text=[prompt], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    result = {"class": type(model).__name__, "logits_shape": list(logits.shape),
              "finite": bool(torch.isfinite(logits).all()), "load_s": round(time.perf_counter() - started, 1)}
    del model
    return result


# --- data ------------------------------------------------------------------------------------------------------


def write_speech_records(folder: Path, count: int) -> Path:
    """``count`` QA records from data/ with synthetic 1–2 s clips (chirps + noise, 16 kHz): a JSONL."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    with QA_DATA.open() as handle:
        records = [json.loads(line) for line in handle if line.strip()][:count]
    for index, record in enumerate(records):
        seconds = 1.0 + index % 3 * 0.5
        t = np.arange(int(16_000 * seconds)) / 16_000
        clip = 0.2 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{index}.wav", clip.astype(np.float32), 16_000)
        lines.append(json.dumps({**record, "audio": f"clip{index}.wav"}))
    path = folder / "speech.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the in-process stages -------------------------------------------------------------------------------------


def timed_command(main, argv: list[str]) -> tuple[float, float]:
    """Run a CLI `main(argv)` in this process; (seconds, peak RSS above the start in MB). Fails on a non-zero exit."""
    from speech_llama.fsdp import peak_rss_bytes, reset_peak_rss, rss_bytes

    baseline = rss_bytes()
    reset_peak_rss()
    started = time.perf_counter()
    status = main(argv)
    if status not in (0, None):
        raise SystemExit(f"bench/real_shapes.py: `{' '.join(argv[:1])}` exited {status}")
    return round(time.perf_counter() - started, 1), round((peak_rss_bytes() - baseline) / MB)


def importance_stage(model_dir: Path, data: Path, kind: str, records: int, out: Path) -> dict:
    from importance.cli import main

    seconds, peak = timed_command(main, ["importance", "--model", str(model_dir), "--data", str(data), "--input", kind,
                                         "--max-samples", str(records), "--batch-size", "2", "--max-length", "256",
                                         "--no-progress", "--out", str(out)])
    summary = json.loads(out.with_suffix(".json").read_text())
    layers = summary["layers"]
    return {"s": seconds, "peak_MB": peak, "tokens": summary["num_tokens"], "layers": len(layers),
            "tokens_per_s": round(summary["num_tokens"] / max(seconds, 1e-9), 1),
            "finite": all(math.isfinite(value) and value > 0 for value in layers)}


def table1_stage(model_dir: Path, importance: Path, data: Path, records: int, out: Path) -> dict:
    from importance.cli import main

    seconds, peak = timed_command(main, ["deactivate", "--model", str(model_dir), "--importance", str(importance),
                                         "--data", str(data), "--skip", str(records), "--max-samples", str(records),
                                         "--batch-size", "2", "--max-length", "256", "--no-progress", "--out", str(out)])
    result = json.loads(out.read_text())
    ppl = result["ppl"]
    return {"s": seconds, "peak_MB": peak, "ppl": ppl, "finite": all(math.isfinite(value) for value in ppl.values())}


def eval_stage(model_dir: Path, data: Path, records: int, out: Path) -> dict:
    from apps.cli import main

    seconds, peak = timed_command(main, ["eval", "--model", str(model_dir), "--data", str(data), "--task", "s2t",
                                         "--batch-size", str(records), "--max-samples", str(records),
                                         "--max-new-tokens", "4", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return {"s": seconds, "peak_MB": peak, "n": metrics["n"], "samples_per_s": metrics["samples_per_s"],
            "answers": [row["prediction"] for row in predictions]}


# --- training under FSDP (worker side: one process per rank) ---------------------------------------------------


def train_argv(method: str, model_dir: Path, data: Path, steps: int, out: Path, importance_json: Path) -> list[str]:
    """trainers/run.py arguments: the tiny-random YAML of the method with every size overridden."""
    config = REPO / "trainers" / "configs" / "tiny-random" / f"{method}.yaml"
    argv = [str(config), "--model_name_or_path", str(model_dir), "--train_data", str(data), "--input", "speech",
            "--max_steps", str(steps), "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
            "--max_length", "256", "--save_strategy", "no", "--logging_steps", "1", "--learning_rate", "2e-5",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0",  # every step updates (a warm-up starts at 0)
            "--output_dir", str(out / method)]
    if method == "layer_lr":
        argv += ["--importance", str(importance_json)]
    if method == "lora":  # the paper's rank (what the memory model counts), not the tiny YAML's
        argv += ["--lora_r", "16", "--lora_alpha", "32"]
    return argv


def worker(work: Path, model_dir: Path, data: Path, steps: int, importance_json: Path) -> None:
    """One FSDP rank: the three methods in turn; each writes ``WORK/train/METHOD/rank<r>.json``."""
    import torch.distributed as dist
    from transformers import TrainerCallback

    from speech_llama.fsdp import peak_rss_bytes, reset_peak_rss, rss_bytes
    from trainers.run import main

    class Report(TrainerCallback):
        def __init__(self, folder: Path):
            self.folder, self.record = folder, {"baseline_rss": rss_bytes()}
            self.started = time.perf_counter()
            reset_peak_rss()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from torch.distributed.fsdp import FSDPModule

            self.record["units"] = sum(isinstance(module, FSDPModule) for module in model.modules())
            self.record["world_size"] = dist.get_world_size()
            self.record["load_s"] = round(time.perf_counter() - self.started, 1)

        def on_train_end(self, args, state, control, **kwargs):
            self.record["losses"] = [entry["loss"] for entry in state.log_history if "loss" in entry]
            self.record["steps"] = state.global_step
            self.record["train_peak_rss"] = peak_rss_bytes()  # before the export of final/

        def finish(self):
            self.record["peak_rss"] = peak_rss_bytes()
            self.record["s"] = round(time.perf_counter() - self.started, 1)
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"rank{dist.get_rank()}.json").write_text(json.dumps(self.record))

    for method in METHODS:
        report = Report(work / "train" / method)
        main(train_argv(method, model_dir, data, steps, work / "train", importance_json), callbacks=[report])
        report.finish()  # after the export of final/ (rank 0 gathers the full state dict)


# --- training under FSDP (launcher side) -----------------------------------------------------------------------


def return_freed_memory() -> None:
    """Collect garbage and hand the heap's free pages back (glibc `malloc_trim`; elsewhere only the collect).

    The CLI stages above keep freed blocks in the heap (`speech_llama.memory.reuse_freed_memory`), which
    would sit beside the two training ranks for nothing.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_training(work: Path, model_dir: Path, data: Path, steps: int, importance_json: Path) -> float:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
               "--main_process_port", str(free_port()), str(Path(__file__).resolve()), "--worker", str(work),
               str(model_dir), str(data), str(steps), str(importance_json)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "Error" in line][-5:]
        raise SystemExit("bench/real_shapes.py: the FSDP training launch failed:\n" + "\n".join(errors) + "\n"
                         + result.stderr[-3000:])
    return round(time.perf_counter() - started, 1)


def memory_check(measured: int, during_training: int, predicted: int, extra: int) -> dict:
    """One rank's measured peak against the model (+ rank-0 extras) within the stated tolerance.

    ``during_training``: the peak before the export of final/ (the rest of ``measured`` is the export's).
    """
    allowed = TOLERANCE["factor"] * (predicted + extra) + TOLERANCE["plus_bytes"]
    return {"measured_MB": round(measured / MB), "training_MB": round(during_training / MB),
            "model_MB": round(predicted / MB), "rank0_extra_MB": round(extra / MB),
            "allowed_MB": round(allowed / MB), "ratio": round(measured / max(predicted + extra, 1), 2),
            "ok": measured <= allowed}


def training_results(work: Path, counts) -> dict:
    """Per method: losses, steps, per-rank memory against the model."""
    from speech_llama.real_shapes import predicted_memory

    results = {}
    full_copy = 4 * counts.params  # fp32 bytes of the whole model: what rank 0 alone reads / gathers
    for method in METHODS:
        ranks = [json.loads((work / "train" / method / f"rank{rank}.json").read_text()) for rank in (0, 1)]
        model = predicted_memory(counts, method, 2, 4)["total"]
        extras = [full_copy * (2 if method == "lora" else 1), 0]
        checks = [memory_check(rank["peak_rss"] - rank["baseline_rss"], rank["train_peak_rss"] - rank["baseline_rss"],
                               model, extra)
                  for rank, extra in zip(ranks, extras, strict=True)]
        losses = ranks[0].get("losses", [])
        results[method] = {"losses": losses, "steps": ranks[0].get("steps"), "units": ranks[0].get("units"),
                           "world_size": ranks[0].get("world_size"), "s": ranks[0]["s"], "ranks": checks,
                           "ok": bool(losses) and all(math.isfinite(x) for x in losses) and all(c["ok"] for c in checks)}
    return results


def trained_roundtrip(work: Path, base_dir: Path) -> dict:
    """The trained Full-FT folder through the Auto classes: it loads, and its LLM weights moved."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    final = work / "train" / "full" / "final"
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True, dtype=torch.float32)
    key = "language_model.model.layers.0.mlp.down_proj.weight"
    base = None
    for path in base_dir.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            if key in handle.keys():
                base = handle.get_tensor(key)
    trained = dict(model.named_parameters())[key].detach()
    moved = float((trained - base).abs().max()) if base is not None else float("nan")
    del model
    return {"class": "SpeechLlamaForCausalLM", "max_weight_change": moved, "ok": math.isfinite(moved) and moved > 0}


# --- the run ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, report: dict) -> dict:
    """Every stage in order, filling ``report`` as it goes (a failing stage leaves the figures before it)."""
    from speech_llama.real_shapes import LLMS, WHISPER_LARGE_V3, encoder_config, llm_config, parameter_counts

    scale = SMOKE_SCALE if args.smoke else 1
    started = time.perf_counter()
    report |= {"llm": args.llm, "scale": scale, "decoder_layers": args.decoder_layers,
                    "decoder_layers_real": LLMS[args.llm]["num_hidden_layers"], "encoder_layers": args.encoder_layers,
                    "encoder_layers_real": WHISPER_LARGE_V3["encoder_layers"], "records": args.records, "steps": args.steps,
                    "tolerance": f"measured ≤ {TOLERANCE['factor']} × (model + rank-0 extras) + "
                                 f"{TOLERANCE['plus_bytes'] / 1e9} GB"}
    print(f"real shapes{' (smoke: widths / %d)' % scale if scale > 1 else ''}: {args.llm} with {args.decoder_layers} of "
          f"{report['decoder_layers_real']} decoder layers, whisper-large-v3 encoder with {args.encoder_layers} of "
          f"{report['encoder_layers_real']} layers (fewer layers for memory; every matrix at its real shape)", flush=True)
    with tempfile.TemporaryDirectory(prefix="real-shapes-") as folder:
        work = Path(folder)
        model_dir = work / "model"
        report["build"] = build_model(model_dir, args.llm, args.decoder_layers, args.encoder_layers, scale)
        report["shapes"] = shapes_of(model_dir)
        counts = parameter_counts(llm_config(args.llm, args.decoder_layers, scale),
                                  encoder_config(args.encoder_layers, scale), vocab_rows=report["build"]["rows"])
        report["counts"] = counts.__dict__
        print(f"build: {json.dumps(report['build'])} shapes {json.dumps(report['shapes'])}", flush=True)
        report["auto_load"] = auto_roundtrip(model_dir)
        print(f"auto classes: {json.dumps(report['auto_load'])}", flush=True)
        speech = write_speech_records(work / "speech", 2 * args.records)
        imp = work / "importance"
        report["importance"] = {kind: importance_stage(model_dir, data, kind, args.records, imp / f"{kind}.safetensors")
                                for kind, data in (("text", QA_DATA), ("speech", speech))}
        print(f"importance: {json.dumps(report['importance'])}", flush=True)
        report["table1"] = table1_stage(model_dir, imp / "text.safetensors", QA_DATA, args.records, imp / "table1.json")
        print(f"table 1: {json.dumps(report['table1'])}", flush=True)
        report["eval"] = eval_stage(model_dir, speech, args.records, work / "eval")
        print(f"eval: {json.dumps(report['eval'])}", flush=True)
        return_freed_memory()  # the two ranks need the RAM this process's stages left in its heap
        report["train_launch_s"] = launch_training(work, model_dir, speech, args.steps, imp / "text.json")
        report["train"] = training_results(work, counts)
        for method, figures in report["train"].items():
            print(f"train {method}: {json.dumps(figures)}", flush=True)
        report["trained_auto_load"] = trained_roundtrip(work, model_dir)
    report["ok"] = all([
        report["auto_load"]["finite"], report["auto_load"]["logits_shape"][-1] == report["build"]["rows"],
        all(stage["finite"] and stage["layers"] == args.decoder_layers for stage in report["importance"].values()),
        report["table1"]["finite"], report["eval"]["n"] == args.records,
        all(figures["ok"] and figures["steps"] == args.steps for figures in report["train"].values()),
        report["trained_auto_load"]["ok"],
    ])
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default="llama-3.2-1b", choices=("llama-3.2-1b", "llama-3.1-8b"))
    parser.add_argument("--decoder-layers", type=int, default=2, help="decoder layers built (of 16 / 32; ≥ 2)")
    parser.add_argument("--encoder-layers", type=int, default=2, help="Whisper encoder layers built (of 32; ≥ 1)")
    parser.add_argument("--records", type=int, default=4, help="records per stage (importance, Table 1, eval)")
    parser.add_argument("--steps", type=int, default=2, help="training steps of each method")
    parser.add_argument("--smoke", action="store_true", help=f"every width / {SMOKE_SCALE}: the same stages in about a minute")
    parser.add_argument("--worker", nargs=5, metavar=("WORK", "MODEL", "DATA", "STEPS", "IMPORTANCE"),
                        help=argparse.SUPPRESS)  # one FSDP rank (started by this script under accelerate launch)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """One line per bad value (the GPU-less machine would otherwise fail minutes later)."""
    if args.decoder_layers < 2:
        raise SystemExit(f"bench/real_shapes.py: --decoder-layers must be 2 or more (Layer-LR needs a spread), got {args.decoder_layers}")
    for name in ("encoder_layers", "records", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"bench/real_shapes.py: --{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        work, model_dir, data, steps, importance_json = args.worker
        worker(Path(work), Path(model_dir), Path(data), int(steps), Path(importance_json))
        return
    check_args(args)
    report: dict = {}
    try:
        run(args, report)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the JSON line must come out whatever failed
        report |= {"ok": False, "error": " ".join(str(error).split())[-2000:] or type(error).__name__}
        print(json.dumps(report))
        raise SystemExit(1) from error
    print(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
