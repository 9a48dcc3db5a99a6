"""`speech-llama reproduce --preset paper-1b|paper-8b`: the seed paper's run on its own data and models.

Models: Llama-3.2-1B-Instruct or Llama-3.1-8B-Instruct + the whisper-large-v3 encoder + the k=5 adaptor.
Data: first turns of gpt-omni/VoiceAssistant-400K and GSQA/spoken-alpaca-gpt4 (``--train-records`` from
each, streamed), importance on the first 1/30 of the interleaved training set, Table 1's perplexity on
500 held-out first turns (250 from each set, taken after the training ones), Table 2 on
fixie-ai/llama-questions and chiyuanhsiao/spoken-web-questions. Training: LLaMA-Omni Stage 1 (lr 2e-5,
cosine, 3 % warmup, 3 epochs, global batch 32, bf16), Full-FT / Layer-LR / LoRA r 16, FSDP2 over N GPUs.

- ``--dry-run`` prints the plan (stages, data, steps, the memory model's GB per GPU) and then opens
  every data set (one record each): where the Hub cannot be reached it stops with one line naming
  the data set. ``--data-root DIR`` reads local copies laid out as the Hub repositories instead
  (the schema fixtures in tests/fixtures/paper_data/ are such copies).
- Without ``--dry-run``: streams the records into ``DIR/data/*`` (save_to_disk folders), writes the
  training YAMLs, the accelerate FSDP config for N GPUs and ``DIR/run.sh`` — every later stage as the
  project's own commands (build, importance, deactivate, train, eval, compare) — to run on the GPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from speech_llama.real_shapes import LLMS, WHISPER_LARGE_V3, encoder_config, llm_config, parameter_counts, predicted_memory
from speech_llama.records.paper_data import EVAL_SOURCES, TRAIN_SOURCES, PaperSource, interleave, stream_records

REPO = Path(__file__).resolve().parents[2]
FSDP_TEMPLATE = REPO / "trainers" / "configs" / "accelerate" / "fsdp.yaml"
METHODS = ("full", "layer_lr", "lora")
GB = 1e9


@dataclass(frozen=True)
class PaperPreset:
    """One of the paper's runs (settings fixed before any result).

    Attributes:
        shape: key of `speech_llama.real_shapes.LLMS`.
        train_records: first-turn records taken from *each* training set (``--train-records``).
        heldout_records: held-out first turns from each training set (Table 1's perplexity set: 2 × 250).
        importance_fraction: share of the training set the importance is measured on (the paper: 1/30).
        gpus: FSDP processes (``--gpus``); per_device_batch × accumulation × gpus = global_batch.
    """

    name: str
    shape: str
    encoder: str
    train_records: int
    gpus: int
    per_device_batch: int
    heldout_records: int = 250
    importance_fraction: float = 1 / 30
    epochs: int = 3
    global_batch: int = 32
    learning_rate: float = 2e-5
    lora_learning_rate: float = 2e-4
    warmup_ratio: float = 0.03
    lora_rank: int = 16
    layer_lr_alpha: float = 0.4
    max_length: int = 1024
    max_new_tokens: int = 64
    importance_batch: int = 4

    @property
    def llm(self) -> str:
        return LLMS[self.shape]["hub_id"]


PAPER_PRESETS = {
    "paper-1b": PaperPreset(name="paper-1b", shape="llama-3.2-1b", encoder=WHISPER_LARGE_V3["hub_id"],
                            train_records=20_000, gpus=4, per_device_batch=8),
    "paper-8b": PaperPreset(name="paper-8b", shape="llama-3.1-8b", encoder=WHISPER_LARGE_V3["hub_id"],
                            train_records=50_000, gpus=8, per_device_batch=1),
}


def accumulation(preset: PaperPreset) -> int:
    """Gradient accumulation steps for the global batch.

    Raises:
        ValueError: the global batch is not a multiple of per-device batch × GPUs.
    """
    per_step = preset.per_device_batch * preset.gpus
    if preset.global_batch % per_step:
        raise ValueError(f"--gpus {preset.gpus}: global batch {preset.global_batch} is not a multiple of "
                         f"{preset.per_device_batch} per GPU × {preset.gpus} GPUs; use a divisor of "
                         f"{preset.global_batch // preset.per_device_batch}")
    return preset.global_batch // per_step


def training_steps(preset: PaperPreset) -> dict[str, int]:
    """Optimizer steps: per epoch, total, warmup (3 % of total, rounded up as the Trainer does)."""
    records = preset.train_records * len(TRAIN_SOURCES)
    per_epoch = math.ceil(records / preset.global_batch)
    total = per_epoch * preset.epochs
    return {"records": records, "per_epoch": per_epoch, "total": total,
            "warmup": math.ceil(preset.warmup_ratio * total), "accumulation": accumulation(preset)}


def memory_table(preset: PaperPreset) -> dict[str, dict[str, float]]:
    """GB per GPU by the memory model (bf16 weights, fp32 accumulators / master weights + AdamW,
    activations not included): one GPU alone, and FSDP over ``preset.gpus``."""
    counts = parameter_counts(llm_config(preset.shape), encoder_config(), lora_r=preset.lora_rank)
    table = {}
    for method in ("importance", *METHODS):
        one = predicted_memory(counts, method, 1, 2)["total"]
        sharded = predicted_memory(counts, method, preset.gpus, 2)
        table[method] = {"one_gpu_GB": round(one / GB, 1), f"fsdp{preset.gpus}_GB": round(sharded["total"] / GB, 1),
                         "sharded_GB": round(sharded["sharded"] / GB, 1), "gathered_GB": round(sharded["gathered"] / GB, 1)}
    table["counts"] = asdict(counts)
    return table


def data_plan(preset: PaperPreset) -> list[dict]:
    """What is read from each data set: rows per card, first turns taken, held out, evaluated."""
    rows = []
    for source in TRAIN_SOURCES:
        rows.append({"data": source.hub_id, "split": source.split, "card_rows": source.rows,
                     "train": preset.train_records, "heldout": preset.heldout_records,
                     "skip_for_heldout": preset.train_records})
    for source in EVAL_SOURCES:
        rows.append({"data": source.hub_id, "split": source.split, "card_rows": source.rows, "eval": source.rows})
    return rows


def importance_records(preset: PaperPreset) -> int:
    return max(1, math.ceil(preset.train_records * len(TRAIN_SOURCES) * preset.importance_fraction))


def make_plan(preset: PaperPreset, out: Path) -> dict:
    """Everything the run will do, before any of it runs."""
    return {
        "preset": preset.name, "llm": preset.llm, "encoder": preset.encoder, "gpus": preset.gpus,
        "settings": asdict(preset), "data": data_plan(preset), "importance_records": importance_records(preset),
        "steps": training_steps(preset), "memory": memory_table(preset),
        "stages": [{"stage": stage, "command": command} for stage, command in stage_commands(preset, out)],
    }


def render_plan(plan: dict) -> str:
    """The plan as the lines `--dry-run` prints."""
    steps, counts = plan["steps"], plan["memory"]["counts"]
    lines = [f"plan {plan['preset']}: {plan['llm']} + {plan['encoder']} encoder, FSDP2 over {plan['gpus']} GPUs",
             f"  parameters: {counts['params'] / 1e9:.2f} B (decoder layers {counts['decoder'] / 1e9:.2f} B, "
             f"encoder {counts['encoder'] / 1e9:.2f} B frozen, adaptor {counts['adaptor'] / 1e6:.1f} M, "
             f"LoRA r {plan['settings']['lora_rank']}: {counts['lora'] / 1e6:.1f} M)"]
    for row in plan["data"]:
        use = (f"train {row['train']} first turns + {row['heldout']} held out" if "train" in row
               else f"evaluate all {row['eval']}")
        lines.append(f"  data {row['data']} [{row['split']}, {row['card_rows']} rows]: {use}")
    lines.append(f"  importance: the first {plan['importance_records']} training records (1/30), text and speech input")
    lines.append(f"  training: {steps['records']} records × {plan['settings']['epochs']} epochs at batch "
                 f"{plan['settings']['global_batch']} = {steps['total']} steps ({steps['per_epoch']} per epoch, "
                 f"{steps['warmup']} warmup, accumulation {steps['accumulation']})")
    fsdp_key = f"fsdp{plan['gpus']}_GB"
    for method, row in plan["memory"].items():
        if method != "counts":
            lines.append(f"  memory {method}: {row['one_gpu_GB']} GB on one GPU, "
                         f"{row[fsdp_key]} GB per GPU under FSDP (model, activations not included)")
    lines += [f"  stage {row['stage']}: {row['command']}" for row in plan["stages"]]
    return "\n".join(lines)


# --- the stages as commands -------------------------------------------------------------------------------


def _layout(out: Path) -> dict[str, Path]:
    return {"model": out / "model", "data": out / "data", "configs": out / "configs", "importance": out / "importance",
            "train": out / "train", "eval": out / "eval", "compare": out / "compare"}


def _launch(out: Path) -> str:
    return f"accelerate launch --config_file {shlex.quote(str(_layout(out)['configs'] / 'accelerate-fsdp.yaml'))}"


def stage_commands(preset: PaperPreset, out: Path) -> list[tuple[str, str]]:
    """(stage, shell command) in order: what run.sh runs after the data stage."""
    paths = {name: shlex.quote(str(path)) for name, path in _layout(out).items()}
    model, data, imp = paths["model"], paths["data"], paths["importance"]
    commands = [("data", f"speech-llama reproduce --preset {preset.name} --out {shlex.quote(str(out))} "
                         f"--train-records {preset.train_records} --gpus {preset.gpus}"),
                ("build", f"speech-llama build --llm {preset.llm} --encoder {preset.encoder} --out {model} --dtype bfloat16")]
    for kind in ("text", "speech"):
        commands.append((f"importance-{kind}", f"{_launch(out)} -m importance.cli importance --model {model} "
                         f"--data {data}/train --input {kind} --max-samples {importance_records(preset)} "
                         f"--batch-size {preset.importance_batch} --dtype bfloat16 --no-progress "
                         f"--out {imp}/base-{kind}.safetensors"))
        commands.append((f"table1-{kind}", f"speech-llama deactivate --model {model} --importance {imp}/base-{kind}.safetensors "
                         f"--data {data}/heldout --input {kind} --out {imp}/table1-{kind}.json --no-progress"))
    trainer = shlex.quote(str(REPO / "trainers" / "run.py"))
    for method in METHODS:
        commands.append((f"train-{method}", f"{_launch(out)} {trainer} {paths['configs']}/{method}.yaml"))
        commands.append((f"importance-{method}", f"{_launch(out)} -m importance.cli importance --model "
                         f"{paths['train']}/{method}/final --data {data}/train --input text --max-samples "
                         f"{importance_records(preset)} --batch-size {preset.importance_batch} --dtype bfloat16 "
                         f"--no-progress --out {imp}/{method}-text.safetensors"))
    for name in ("base", *METHODS):
        folder = model if name == "base" else f"{paths['train']}/{name}/final"
        for source in EVAL_SOURCES:
            for task in ("t2t", "s2t"):
                commands.append((f"eval-{name}-{source.short_name}-{task}",
                                 f"speech-llama eval --model {folder} --data {data}/{source.short_name} --task {task} "
                                 f"--max-new-tokens {preset.max_new_tokens} --out {paths['eval']}/{name}/{source.short_name}-{task}"))
    artifacts = " ".join(f"{imp}/{name}-text.safetensors" for name in ("base", *METHODS))
    commands.append(("compare", f"speech-llama compare {artifacts} --out {paths['compare']}"))
    return commands


# --- the data stage and the files run.sh reads ----------------------------------------------------------------


def source_location(source: PaperSource, data_root: Path | None) -> Path | None:
    """A local copy of ``source`` under ``data_root`` (named as the repository), or None: the Hub."""
    return None if data_root is None else data_root / source.short_name


def probe_sources(data_root: Path | None) -> list[str]:
    """Open every data set and read one record; the first that cannot be read raises (one line)."""
    lines = []
    for source in (*TRAIN_SOURCES, *EVAL_SOURCES):
        record = stream_records(source, 1, location=source_location(source, data_root))[0]
        lines.append(f"  reachable {source.hub_id}: first question {record['question'][:60]!r}")
    return lines


def write_data(preset: PaperPreset, out: Path, data_root: Path | None) -> dict[str, int]:
    """Stream the records into ``DIR/data/{train,heldout,<eval set>}`` (save_to_disk folders); returns counts."""
    folder = _layout(out)["data"]
    train = [stream_records(source, preset.train_records, location=source_location(source, data_root))
             for source in TRAIN_SOURCES]
    heldout = [stream_records(source, preset.heldout_records, skip=preset.train_records,
                              location=source_location(source, data_root)) for source in TRAIN_SOURCES]
    # Instruction records keep question / response / audio: an empty `answers` column would make a
    # reloaded folder look like QA data without gold answers.
    counts = {"train": _save(interleave(train).remove_columns(["answers"]), folder / "train"),
              "heldout": _save(interleave(heldout).remove_columns(["answers"]), folder / "heldout")}
    for source in EVAL_SOURCES:
        records = stream_records(source, source.rows, location=source_location(source, data_root))
        counts[source.short_name] = _save(records, folder / source.short_name)
    return counts


def _save(records, folder: Path) -> int:
    records.save_to_disk(str(folder))
    return len(records)


def train_config(preset: PaperPreset, out: Path, method: str) -> dict:
    """The trainer keys of one method (trainers/run.py YAML)."""
    paths = _layout(out)
    config = {
        "model_name_or_path": str(paths["model"]), "train_data": str(paths["data"] / "train"), "method": method,
        "input": "speech", "max_length": preset.max_length, "model_dtype": "float32",
        "output_dir": str(paths["train"] / method),
        "learning_rate": preset.lora_learning_rate if method == "lora" else preset.learning_rate,
        "lr_scheduler_type": "cosine", "warmup_steps": preset.warmup_ratio, "num_train_epochs": preset.epochs,
        "per_device_train_batch_size": preset.per_device_batch, "gradient_accumulation_steps": accumulation(preset),
        "weight_decay": 0.0, "max_grad_norm": 1.0,
        "bf16": True,  # never fp16: LLaMA-Omni Stage 1 is reported to give NaN losses in fp16
        "logging_steps": 10, "save_strategy": "steps", "save_steps": 1000, "save_total_limit": 2,
        "report_to": "none", "seed": 0, "dataloader_num_workers": 4, "use_cpu": False,
    }
    if method == "lora":
        config |= {"lora_r": preset.lora_rank, "lora_alpha": 2 * preset.lora_rank, "lora_dropout": 0.05}
    if method == "layer_lr":
        config |= {"importance": str(paths["importance"] / "base-text.json"), "layer_lr_alpha": preset.layer_lr_alpha,
                   "layer_lr_scheme": "minmax"}
    return config


def accelerate_config(gpus: int) -> dict:
    """trainers/configs/accelerate/fsdp.yaml (FSDP2, one unit per decoder / encoder layer, bf16) for ``gpus``."""
    config = yaml.safe_load(FSDP_TEMPLATE.read_text())
    config["num_processes"] = gpus
    return config


def write_run_files(preset: PaperPreset, out: Path, plan: dict) -> Path:
    """The YAMLs, the accelerate config, plan.json and run.sh (every stage after data); returns run.sh."""
    configs = _layout(out)["configs"]
    configs.mkdir(parents=True, exist_ok=True)
    for method in METHODS:
        (configs / f"{method}.yaml").write_text(yaml.safe_dump(train_config(preset, out, method), sort_keys=False))
    (configs / "accelerate-fsdp.yaml").write_text(yaml.safe_dump(accelerate_config(preset.gpus), sort_keys=False))
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    lines = ["#!/usr/bin/env bash", f"# {preset.name}: every stage after `data`, on a machine with {preset.gpus} GPUs.",
             "set -euo pipefail", f"cd {shlex.quote(str(REPO))}"]
    for row in plan["stages"][1:]:  # the data stage is this command itself, already done
        lines += [f"echo '[{preset.name}] stage {row['stage']}'", row["command"]]
    script = out / "run.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


# --- the command ---------------------------------------------------------------------------------------------


def preset_for(args: argparse.Namespace) -> PaperPreset:
    """The preset with the command line's overrides (checked)."""
    from dataclasses import replace

    other = [flag for flag, key in (("--fast", "fast"), ("--ablation", "ablation"), ("--seeds", "seeds"))
             if getattr(args, key, None)]
    if other:
        raise ValueError(f"{', '.join(other)}: not for --preset {args.preset} (one seed, no ablations; see docs/real-run.md)")
    preset = PAPER_PRESETS[args.preset]
    if args.train_records is not None:
        if args.train_records < 1:
            raise ValueError(f"--train-records must be 1 or more, got {args.train_records}")
        preset = replace(preset, train_records=args.train_records)
    if args.gpus is not None:
        if args.gpus < 1:
            raise ValueError(f"--gpus must be 1 or more, got {args.gpus}")
        preset = replace(preset, gpus=args.gpus)
    accumulation(preset)  # a global batch the GPUs cannot share fails now, not on the GPUs
    return preset


def run(args: argparse.Namespace) -> dict:
    """Plan (and with ``--dry-run`` only check the data sets open), or write the data and run files."""
    preset = preset_for(args)
    data_root = getattr(args, "data_root", None)
    if data_root is not None and not Path(data_root).is_dir():
        raise FileNotFoundError(f"--data-root {data_root}: no such folder")
    out = Path(args.out).resolve()
    plan = make_plan(preset, out)
    print(render_plan(plan), flush=True)
    if args.dry_run:
        for line in probe_sources(data_root):
            print(line, flush=True)
        print(f"dry run: the plan holds; `speech-llama reproduce --preset {preset.name} --out {out}` writes the data "
              f"and {out / 'run.sh'}")
        return plan
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    plan["records"] = write_data(preset, out, data_root)
    script = write_run_files(preset, out, plan)
    print(json.dumps({"records": plan["records"], "run": str(script)}))
    return plan


__all__ = ["PAPER_PRESETS", "PaperPreset", "make_plan", "render_plan", "run", "stage_commands", "train_config",
           "training_steps"]
