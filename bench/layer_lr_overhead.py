"""Step-time overhead of Layer-LR (one optimizer group per decoder layer × decay) over Full-FT.

Both arms train the same model on the same fixed speech batch; they differ only in the optimizer
`SpeechLlamaTrainer.create_optimizer` builds (and its scheduler). Steps alternate full / layer_lr and
each layer_lr step is compared with the full step next to it (the median of these paired ratios),
so that bursts of load from other jobs on a shared machine hit both arms of a pair alike.

    python bench/layer_lr_overhead.py [--model runs/offline-mini] [--steps 8] [--batch 4] [--smoke]

The last line is JSON: {"step_time_ratio": layer_lr / full, ...}; the target is <= 1.02.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `trainers` lives in the repository root

from transformers import TrainingArguments  # noqa: E402

from speech_llama.generate import load_model  # noqa: E402
from trainers.data import MixedQACollator  # noqa: E402
from trainers.layer_lr import layer_lr_spec  # noqa: E402
from trainers.trainer import SpeechLlamaTrainer  # noqa: E402

TARGET = 1.02
DEFAULT_MODEL = REPO / "runs" / "offline-mini"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=f"SpeechLlama folder (default: {DEFAULT_MODEL} if built, else tiny-random)")
    parser.add_argument("--steps", type=int, help="measured steps per arm (default 12; --smoke: 2)")
    parser.add_argument("--warmup", type=int, help="unmeasured steps per arm first (default 2; --smoke: 1)")
    parser.add_argument("--batch", type=int, help="default 2 (--smoke: 1)")
    parser.add_argument("--seconds", type=float, help="length of each (noise) clip (default 2.0; --smoke: 1.0)")
    parser.add_argument("--smoke", action="store_true",
                        help="the same comparison on tiny-random (built in a temporary folder) at tiny sizes, in seconds (for tests)")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    options = build_parser().parse_args(argv)
    for name, full, smoke in (("steps", 12, 2), ("warmup", 2, 1), ("batch", 2, 1), ("seconds", 2.0, 1.0)):
        if getattr(options, name) is None:
            setattr(options, name, smoke if options.smoke else full)
    return options


def model_dir(requested: Path | None, scratch: Path, smoke: bool = False) -> tuple[Path, str]:
    """The model folder to measure and a label for it."""
    if requested is not None:
        return requested, str(requested)
    if not smoke and (DEFAULT_MODEL / "config.json").is_file():
        return DEFAULT_MODEL, "offline-mini"
    from speech_llama.presets import build_tiny_random

    return build_tiny_random(scratch / "tiny-random"), "tiny-random"


def fixed_batch(processor, batch_size: int, seconds: float) -> dict[str, torch.Tensor]:
    """A speech batch of noise clips with short answers (content does not matter for timing)."""
    rng = np.random.default_rng(0)
    records = [
        {"question": f"Question {i}?", "answers": [f"The answer is number {i}."], "_row": i,
         "audio": {"array": (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), "sampling_rate": 16000}}
        for i in range(batch_size)
    ]
    return MixedQACollator(processor, input="speech")(records)


def make_trainer(model, scratch: Path, name: str, spec=None) -> SpeechLlamaTrainer:
    """A trainer whose optimizer and cosine schedule are exactly what a run would build."""
    args = TrainingArguments(output_dir=str(scratch / name), learning_rate=2e-5, lr_scheduler_type="cosine",
                             warmup_steps=0.03, use_cpu=not torch.cuda.is_available(), report_to="none",
                             remove_unused_columns=False)
    trainer = SpeechLlamaTrainer(model=model, args=args, layer_lr=spec)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    return trainer


def train_step(model, trainer: SpeechLlamaTrainer, batch: dict) -> tuple[float, float]:
    """One full step (forward, backward, clip, optimizer, schedule); returns (step s, optimizer s)."""
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer_start = time.perf_counter()
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    end = time.perf_counter()
    return end - start, end - optimizer_start


def paired_ratio(times: dict, kind: str) -> float:
    """Median over iterations of layer_lr time / full time of the same iteration."""
    return statistics.median(ll / full for ll, full in zip(times["layer_lr"][kind], times["full"][kind]))


def main() -> dict:
    options = parse()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        folder, label = model_dir(options.model, scratch, options.smoke)
        model, processor = load_model(folder)
        model.train()
        num_layers = model.config.text_config.num_hidden_layers
        summary = scratch / "importance.json"
        # A ramp of layer importances: every layer gets its own coefficient (worst case for grouping).
        summary.write_text(json.dumps({"layers": [1.0 + layer for layer in range(num_layers)]}))
        spec = layer_lr_spec(summary, num_layers, alpha=0.4, scheme="minmax", base_lr=2e-5)
        arms = {"full": make_trainer(model, scratch, "full"), "layer_lr": make_trainer(model, scratch, "layer_lr", spec)}
        batch = fixed_batch(processor, options.batch, options.seconds)
        times = {name: {"step": [], "optimizer": []} for name in arms}
        for index in range(options.warmup + options.steps):
            order = list(arms) if index % 2 == 0 else list(reversed(arms))  # alternate who goes first
            for name in order:
                step_s, optimizer_s = train_step(model, arms[name], batch)
                if index >= options.warmup:
                    times[name]["step"].append(step_s)
                    times[name]["optimizer"].append(optimizer_s)
        median = {name: {kind: statistics.median(values) for kind, values in kinds.items()} for name, kinds in times.items()}
        ratio = paired_ratio(times, "step")
        result = {
            "step_time_ratio": round(ratio, 4),
            "optimizer_step_ratio": round(paired_ratio(times, "optimizer"), 4),
            "ratio_of_medians": round(median["layer_lr"]["step"] / median["full"]["step"], 4),
            "full_step_s": round(median["full"]["step"], 4),
            "layer_lr_step_s": round(median["layer_lr"]["step"], 4),
            "full_optimizer_s": round(median["full"]["optimizer"], 5),
            "layer_lr_optimizer_s": round(median["layer_lr"]["optimizer"], 5),
            "groups": {name: len(trainer.optimizer.param_groups) for name, trainer in arms.items()},
            "model": label, "num_layers": num_layers, "batch": options.batch, "steps": options.steps,
            "device": str(model.device), "target": TARGET, "within_target": ratio <= TARGET,
        }
    print(f"{label}: full {result['full_step_s']:.3f} s/step, layer_lr {result['layer_lr_step_s']:.3f} s/step "
          f"({result['groups']['layer_lr']} groups vs {result['groups']['full']}); optimizer step "
          f"{result['full_optimizer_s'] * 1e3:.1f} ms vs {result['layer_lr_optimizer_s'] * 1e3:.1f} ms")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
