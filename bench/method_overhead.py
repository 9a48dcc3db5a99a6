"""Step time of each Full-FT variant over a Full-FT step: Layer-LR (one optimizer group per decoder
layer × decay), region_freeze (1 % of the decoder's entries frozen) and importance_anchor (the
importance-weighted pull toward the base weights); memory each constraint holds.

All arms train the same model on the same fixed speech batch; they differ only in what
`SpeechLlamaTrainer` builds around the optimizer (groups, constraint hooks). Steps alternate the arms
(the order rotates), and each arm's step is compared with the full step of the same round (the median
of these paired ratios), so bursts of load from other jobs on a shared machine hit every arm alike.
The constraints read a synthetic importance artifact (|θ| × an exponential draw per entry: its
values do not change the cost).

    python bench/method_overhead.py [--model runs/offline-mini] [--steps 12] [--batch 2] [--smoke]

The last line is JSON: {"step_time_ratio": {"layer_lr": …, "region_freeze": …, "importance_anchor": …}, …};
targets: layer_lr <= 1.02, region_freeze <= 1.05, importance_anchor <= 1.3.
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
from importance.artifact import build_summary, save_artifact  # noqa: E402
from trainers.constraints import build_constraint  # noqa: E402
from trainers.layer_lr import layer_lr_spec  # noqa: E402
from trainers.trainer import SpeechLlamaTrainer  # noqa: E402

TARGETS = {"layer_lr": 1.02, "region_freeze": 1.05, "importance_anchor": 1.3}
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


def make_trainer(model, scratch: Path, name: str, spec=None, constraint_factory=None) -> SpeechLlamaTrainer:
    """A trainer whose optimizer, cosine schedule and constraint hooks are exactly what a run would build."""
    args = TrainingArguments(output_dir=str(scratch / name), learning_rate=2e-5, lr_scheduler_type="cosine",
                             warmup_steps=0.03, use_cpu=not torch.cuda.is_available(), report_to="none",
                             remove_unused_columns=False, weight_decay=0.01)
    trainer = SpeechLlamaTrainer(model=model, args=args, layer_lr=spec, constraint_factory=constraint_factory)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    return trainer


def synthetic_importance(model, path: Path) -> Path:
    """An importance artifact over the decoder layers: |θ| × Exp(1) per entry (the cost does not depend on it)."""
    generator = torch.Generator().manual_seed(0)
    importances = {name: parameter.detach().abs().float() * torch.empty_like(parameter, dtype=torch.float32).exponential_(
                       generator=generator)
                   for name, parameter in model.named_parameters() if ".layers." in name and name.startswith("language_model")}
    summary = build_summary(importances, num_layers=model.config.text_config.num_hidden_layers, model="bench",
                            input="text", num_samples=0, num_tokens=0, reduction="sum")
    return save_artifact(path, importances, summary)


def constraint_arm(model, folder: Path, scratch: Path, method: str, importance: Path) -> tuple[SpeechLlamaTrainer, dict]:
    """The arm's trainer and what its constraint holds (bytes it keeps, RSS grown while building it)."""
    from speech_llama.fsdp import rss_bytes

    before = rss_bytes()
    trainer = make_trainer(model, scratch, method, constraint_factory=lambda wrapped: build_constraint(
        method, wrapped, importance, folder, fraction=0.01, strength=1.0))
    constraint = trainer.active_constraint()
    return trainer, {**constraint.describe(), "rss_grown_MB": round((rss_bytes() - before) / 1e6, 1)}


def train_step(model, trainer: SpeechLlamaTrainer, batch: dict) -> tuple[float, float]:
    """One full step (forward, backward, constraint edit, clip, optimizer, schedule); returns (step s, optimizer s)."""
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    if trainer.constraint is not None:
        trainer.constraint.prepare_gradients()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer_start = time.perf_counter()
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    end = time.perf_counter()
    return end - start, end - optimizer_start


def paired_ratio(times: dict, arm: str, kind: str) -> float:
    """Median over rounds of the arm's time / the full step's time in the same round."""
    return statistics.median(other / full for other, full in zip(times[arm][kind], times["full"][kind], strict=True))


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
        importance = synthetic_importance(model, scratch / "synthetic.safetensors")
        arms = {"full": make_trainer(model, scratch, "full"), "layer_lr": make_trainer(model, scratch, "layer_lr", spec)}
        held = {}
        for method in ("region_freeze", "importance_anchor"):
            arms[method], held[method] = constraint_arm(model, folder, scratch, method, importance)
        batch = fixed_batch(processor, options.batch, options.seconds)
        times = {name: {"step": [], "optimizer": []} for name in arms}
        names = list(arms)
        for index in range(options.warmup + options.steps):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:  # rotate who goes first
                step_s, optimizer_s = train_step(model, arms[name], batch)
                if index >= options.warmup:
                    times[name]["step"].append(step_s)
                    times[name]["optimizer"].append(optimizer_s)
        median = {name: {kind: statistics.median(values) for kind, values in kinds.items()} for name, kinds in times.items()}
        ratios = {arm: round(paired_ratio(times, arm, "step"), 4) for arm in TARGETS}
        result = {
            "step_time_ratio": ratios,
            "optimizer_step_ratio": {arm: round(paired_ratio(times, arm, "optimizer"), 4) for arm in TARGETS},
            "step_s": {name: round(values["step"], 4) for name, values in median.items()},
            "optimizer_s": {name: round(values["optimizer"], 5) for name, values in median.items()},
            "groups": {name: len(trainer.optimizer.param_groups) for name, trainer in arms.items()},
            "constraint_memory": held,
            "model": label, "num_layers": num_layers, "batch": options.batch, "steps": options.steps,
            "device": str(model.device), "targets": TARGETS,
            "within_target": {arm: ratios[arm] <= target for arm, target in TARGETS.items()},
        }
    print(f"{label}: full {result['step_s']['full']:.3f} s/step; " + ", ".join(
        f"{arm} {ratios[arm]:.3f}x" for arm in TARGETS) + f" (layer_lr: {result['groups']['layer_lr']} groups vs "
        f"{result['groups']['full']}; anchor holds {held['importance_anchor']['bytes_here'] / 1e6:.0f} MB, "
        f"region {held['region_freeze']['bytes_here'] / 1e6:.1f} MB)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
