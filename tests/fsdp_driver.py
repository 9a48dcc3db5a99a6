"""What tests/test_fsdp.py launches under `accelerate launch --config_file trainers/configs/accelerate/fsdp_cpu.yaml`.

    fsdp_driver.py importance OUT MODEL TEXT_DATA SPEECH_DATA POISON_BATCH
        two `speech-llama importance` runs in one launch (imports are the slow part):
        text input, mean reduction, float64 weights, with batch POISON_BATCH's loss made NaN on rank 1 only;
        speech input, abs_per_batch, float64 weights (see tests/test_fsdp.py for why).
    fsdp_driver.py train OUT MODEL DATA IMPORTANCE
        `trainers.run.main` five times: Layer-LR (4 steps, checkpoints 2 and 4), the same run resumed
        from its checkpoint-2 into another folder, LoRA (2 steps, adapter + merged exports),
        region_freeze and importance_anchor (2 steps each, from the IMPORTANCE artifact).
        Each run writes OUT/<run>/fsdp-rank<r>.json: the optimizer's groups as the wrapped model
        sees them, the FSDP units and this rank's peak RSS.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMPORTANCE_COMMON = ["--batch-size", "2", "--max-samples", "9", "--no-progress"]


class PoisonBatch:
    """Wraps `response_nll`: the loss of call number ``batch`` (0-based) becomes NaN
    on process ``rank`` — each process calls it once per batch, in batch order."""

    def __init__(self, original, batch: int, rank: int):
        self.original, self.batch, self.rank, self.calls = original, batch, rank, 0

    def __call__(self, model, batch):
        import torch.distributed as dist

        loss, tokens = self.original(model, batch)
        rank = dist.get_rank() if dist.is_initialized() else 0
        call, self.calls = self.calls, self.calls + 1
        return (loss * float("nan"), tokens) if call == self.batch and rank == self.rank else (loss, tokens)


def importance_runs(out: Path, model: str, text_data: str, speech_data: str, poison: int) -> list[list[str]]:
    """The two runs' argument lists (the test runs the same ones in one process)."""
    return [
        ["importance", "--model", model, "--data", text_data, "--input", "text", "--reduction", "mean",
         "--dtype", "float64", *IMPORTANCE_COMMON, "--out", str(out / "text.safetensors")],
        ["importance", "--model", model, "--data", speech_data, "--input", "speech",
         "--reduction", "abs_per_batch", "--dtype", "float64", *IMPORTANCE_COMMON, "--out", str(out / "speech.safetensors")],
    ]


def run_importance(out: Path, model: str, text_data: str, speech_data: str, poison: int, poison_rank: int) -> None:
    import importance.estimate as estimate
    from importance.cli import main

    original = estimate.response_nll
    text, speech = importance_runs(out, model, text_data, speech_data, poison)
    estimate.response_nll = PoisonBatch(original, poison, poison_rank)
    try:
        assert main(text) in (0, None)
    finally:
        estimate.response_nll = original
    assert main(speech) in (0, None)


def constrained_runs(out: Path, model: str, data: str, importance: str, batch: int) -> dict[str, list[str]]:
    """region_freeze and importance_anchor, 2 steps at a constant rate with weight decay; ``batch`` per process
    (the one-process runs the test compares with take the two processes' global batch)."""
    full = str(REPO / "trainers" / "configs" / "tiny-random" / "full.yaml")
    common = ["--model_name_or_path", model, "--train_data", data, "--per_device_train_batch_size", str(batch),
              "--importance", importance, "--max_steps", "2", "--save_strategy", "no", "--weight_decay", "0.1",
              "--lr_scheduler_type", "constant", "--warmup_steps", "0"]
    return {
        "region_freeze": [full, *common, "--method", "region_freeze", "--region_fraction", "0.05",
                          "--output_dir", str(out / "region_freeze")],
        "importance_anchor": [full, *common, "--method", "importance_anchor", "--anchor_lambda", "1000",
                              "--output_dir", str(out / "importance_anchor")],
    }


def train_runs(out: Path, model: str, data: str, importance: str) -> dict[str, list[str]]:
    configs = REPO / "trainers" / "configs" / "tiny-random"
    common = ["--model_name_or_path", model, "--train_data", data, "--per_device_train_batch_size", "2"]
    return {
        "layer_lr": [str(configs / "layer_lr.yaml"), *common, "--max_steps", "4", "--save_steps", "2",
                     "--output_dir", str(out / "layer_lr")],
        "resumed": [str(configs / "layer_lr.yaml"), *common, "--max_steps", "4", "--save_steps", "2",
                    "--output_dir", str(out / "resumed"),
                    "--resume_from_checkpoint", str(out / "layer_lr" / "checkpoint-2")],
        "lora": [str(configs / "lora.yaml"), *common, "--max_steps", "2", "--save_strategy", "no",
                 "--output_dir", str(out / "lora")],
        **constrained_runs(out, model, data, importance, batch=2),
    }


def group_report(model, optimizer) -> list[dict]:
    """Each optimizer group: name, lr, the canonical names of its tensors and whether they are sharded."""
    from torch.distributed.tensor import DTensor

    from trainers.layer_lr import canonical_name

    names = {id(parameter): canonical_name(name) for name, parameter in model.named_parameters()}
    report = []
    for group in optimizer.param_groups:
        params = group["params"]
        report.append({
            "name": group.get("name"), "lr": group["lr"], "initial_lr": group.get("initial_lr"),
            "params": [names.get(id(p), "?") for p in params],
            "sharded": [isinstance(p, DTensor) for p in params],
            "local_elements": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
            "elements": sum(p.numel() for p in params),
        })
    return report


def run_training(out: Path, model: str, data: str, importance: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from transformers import TrainerCallback

    from speech_llama.fsdp import peak_rss_bytes, reset_peak_rss, rss_bytes
    from trainers.run import main

    class Report(TrainerCallback):
        """After wrapping (train begin): groups and units; at the end: this rank's peak RSS."""

        def __init__(self, folder: Path):
            self.folder, self.record = folder, {"baseline_rss": rss_bytes()}
            reset_peak_rss()

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.record["groups"] = group_report(model, optimizer)
            self.record["units"] = {name: type(module).__name__ for name, module in model.named_modules()
                                    if isinstance(module, FSDPModule)}
            self.record["world_size"] = dist.get_world_size()

        def on_train_end(self, args, state, control, **kwargs):
            self.record["peak_rss"] = peak_rss_bytes()
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"fsdp-rank{dist.get_rank()}.json").write_text(json.dumps(self.record, indent=1))

    for run, argv in train_runs(out, model, data, importance).items():
        main(argv, callbacks=[Report(out / run)])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command, out, *rest = sys.argv[1:]
    if command == "importance":
        model, text_data, speech_data, poison = rest
        run_importance(Path(out), model, text_data, speech_data, int(poison), poison_rank=1)
    elif command == "train":
        run_training(Path(out), *rest)
    else:
        raise SystemExit(f"unknown command {command!r}")
