"""Exports at the end of a run: `final/` (always a complete model folder) and, for LoRA, `adapter/`.

- `output_dir/final/`: weights, config with `auto_map` (AutoConfig / AutoModel / AutoModelForCausalLM),
  the remote-code files, processor and a model card; loads with
  `AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)`. For LoRA the adapters are
  merged into the weights (and the trained adaptor put in place).
- `output_dir/adapter/` (LoRA): the peft adapter (`adapter_config.json`, `adapter_model.safetensors`
  — LoRA weights plus the fully trained adaptor as `modules_to_save`), the processor and a card.
  There is deliberately no `config.json`: transformers' built-in PEFT integration then reads
  `base_model_name_or_path` from `adapter_config.json`, loads that base (its `auto_map` gives the
  remote code) and attaches the adapter, so `AutoModel.from_pretrained(adapter, trust_remote_code=True)`
  returns the adapted model. Publishing: set `base_model_name_or_path` to the base's Hub id
  (`adapter_base_model` key).

Every rank calls the export functions (`Trainer.save_model` gathers FSDP / DeepSpeed shards);
only the main process writes. Folders are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from speech_llama.build import BuildInfo, ensure_auto_map, save_model_folder
from speech_llama.files import give_usual_modes

from .lora import load_adapted, merge_lora

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
ADAPTER_DIR = "adapter"
# Files Trainer.save_model adds that do not belong in a published model folder.
TRAINER_FILES = ("training_args.bin",)


@dataclass
class TrainingInfo:
    """What a model card says about how the model was trained."""

    method: str
    base_model: str
    train_data: str
    input: str
    mix_text_ratio: float
    learning_rate: float
    lr_scheduler: str
    warmup: float
    epochs: float
    global_step: int
    effective_batch_size: int
    precision: str
    final_train_loss: float | None = None
    transcript_ratio: float = 0.0
    licences: str = ""
    layer_lr: dict | None = None
    lora: dict | None = None
    adaptor_lr: float | None = None
    constraint: dict | None = None
    notes: list[str] = field(default_factory=list)


def base_licences(model_name_or_path: str) -> str:
    """The `## Licences` section of a local base model's card (speech-llama build writes one), else ""."""
    card = Path(model_name_or_path) / "README.md"
    if not card.is_file():
        return ""
    lines, section = [], None
    for line in card.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip().lower()
            continue
        if section == "licences" and line.strip():
            lines.append(line)
    return "\n".join(lines)


def base_model_reference(model_name_or_path: str, override: str | None = None) -> str:
    """What `adapter_config.json` names as the base: the override, an absolute local path, or the Hub id."""
    if override:
        return override
    path = Path(model_name_or_path)
    return str(path.resolve()) if path.exists() else model_name_or_path


class NonFiniteWeightsError(ValueError):
    """The trained weights hold NaN or infinite values: nothing is exported."""


def refuse_non_finite(trainer) -> None:
    """Raise on every rank (the count is summed across processes) when any trained weight is not finite."""
    bad = [name for name, parameter in trainer.model.named_parameters() if not torch.isfinite(parameter.detach()).all()]
    total = sum(1 for _ in trainer.model.parameters())
    count = torch.tensor([len(bad)], device=trainer.accelerator.device)
    if trainer.accelerator.num_processes > 1:
        count = trainer.accelerator.reduce(count, reduction="sum")
    if int(count.item()) > 0:
        shown = ", ".join(bad[:3]) + (" …" if len(bad) > 3 else "")
        raise NonFiniteWeightsError(
            f"training left non-finite (NaN / inf) values in {len(bad) or int(count.item())} of {total} weight tensors"
            f"{f' ({shown})' if bad else ''}; nothing exported (no {FINAL_DIR}/): lower the learning rate, check "
            "the Layer-LR coefficients in layer_lr.json and the logged losses"
        )


def export_full(trainer, output_dir: Path, info: TrainingInfo) -> Path:
    """`output_dir/final/` from the trained model (Full-FT and Layer-LR); refused for non-finite weights."""
    refuse_non_finite(trainer)
    final = Path(output_dir) / FINAL_DIR
    staging = _staging(final, trainer)
    trainer.save_model(str(staging))  # all ranks: FSDP/DeepSpeed gather; the main process writes
    if trainer.args.should_save:
        _complete_folder(staging, training_card(info, trainer.model))
        _replace(staging, final)
    trainer.accelerator.wait_for_everyone()
    return final


def export_lora(trainer, output_dir: Path, info: TrainingInfo, base_reference: str, base: str,
                processor, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """`output_dir/adapter/` (peft adapter, loads via AutoModel) and the merged `output_dir/final/`.

    The merged model is rebuilt from disk (base + the adapter just written) on the main process, so
    it does not depend on how the training model was sharded. Refused for non-finite weights.
    """
    refuse_non_finite(trainer)
    adapter = Path(output_dir) / ADAPTER_DIR
    final = Path(output_dir) / FINAL_DIR
    staging = _staging(adapter, trainer)
    trainer.save_model(str(staging))
    if trainer.args.should_save:
        _point_adapter_at_base(staging, base_reference)
        _remove_trainer_files(staging)
        (staging / "README.md").write_text(adapter_card(info, base_reference))
        _replace(staging, adapter)
        merged = merge_lora(load_adapted(base, str(adapter), dtype=dtype))
        # save_model_folder writes the build card; the training card replaces it right after.
        save_model_folder(merged, processor, final, BuildInfo(llm=info.base_model, encoder="(see the base model)"))
        (final / "README.md").write_text(training_card(info, merged))
    trainer.accelerator.wait_for_everyone()
    return adapter, final


def _staging(target: Path, trainer) -> Path:
    """The temporary sibling a folder is written to; a stale one (interrupted export) is removed first.

    Only the main process removes it, and every rank waits for that before anyone writes into it.
    """
    staging = target.with_name(f".{target.name}.partial")
    if trainer.args.should_save and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    return staging


def _replace(staging: Path, target: Path) -> None:
    give_usual_modes(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _complete_folder(folder: Path, card: str) -> None:
    """Make a `Trainer.save_model` folder a full Hub model folder: auto_map for every auto class, card."""
    ensure_auto_map(folder)
    _remove_trainer_files(folder)
    missing = [name for name in ("config.json", "modeling_speech_llama.py", "configuration_speech_llama.py",
                                 "processor_config.json") if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"{folder}: the saved model folder lacks {missing}; it would not load with trust_remote_code")
    (folder / "README.md").write_text(card)


def _remove_trainer_files(folder: Path) -> None:
    for name in TRAINER_FILES:
        (folder / name).unlink(missing_ok=True)


def _point_adapter_at_base(folder: Path, base_reference: str) -> None:
    """Write the base the adapter belongs to, and keep it an inference (not trainable) adapter by default."""
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_reference
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # A config.json next to the adapter would make transformers treat the folder as a full model.
    if (folder / "config.json").exists():
        raise RuntimeError(f"{folder}: unexpected config.json in the adapter folder")


# --- model cards ---------------------------------------------------------------------------------


def _method_lines(info: TrainingInfo) -> list[str]:
    """The card's description of the training method."""
    if info.method == "full":
        return ["- Method: full fine-tuning of the adaptor and the LLM (Whisper encoder frozen)."]
    if info.method == "adaptor":
        return ["- Method: adaptor alignment — the speech adaptor trained alone (answer loss through the frozen LLM, "
                "or CTC over the LLM's embedding matrix); the LLM and the Whisper encoder frozen."]
    if info.method == "region_freeze":
        region = info.constraint or {}
        return [
            "- Method: region freezing — full fine-tuning of the adaptor and the LLM (encoder frozen) except the "
            f"top {region.get('fraction', 0):.2%} of the LLM's analysed parameters by the pre-trained model's "
            f"importance ({region.get('selection')}, {region.get('unit')}s), which keep their pre-trained values.",
            f"- Importance artifact: `{region.get('importance')}`",
        ]
    if info.method == "importance_anchor":
        anchor = info.constraint or {}
        weights = ("Ĩ = 1 on every analysed parameter (uniform: L2-SP)" if anchor.get("weighting") == "uniform" else
                   "Ĩ the pre-trained model's importance over its mean")
        return [
            "- Method: importance anchoring — full fine-tuning of the adaptor and the LLM (encoder frozen) with the "
            f"penalty λ Σ Ĩ (θ − θ⁰)², λ = {anchor.get('lambda')}, {weights}, θ⁰ the pre-trained weights.",
            f"- Importance artifact: `{anchor.get('importance')}`",
        ]
    if info.method == "layer_lr":
        spec = info.layer_lr or {}
        coefficients = ", ".join(f"{c:.3f}" for c in spec.get("coefficients", []))
        return [
            "- Method: Layer-LR — full fine-tuning of the adaptor and the LLM (encoder frozen) with decoder layer l "
            "learning at c_l · learning_rate, c from the layer importance of the pre-trained model.",
            f"- Scheme: {spec.get('scheme')} (α = {spec.get('alpha')}); importance summary: `{spec.get('importance')}`",
            f"- Coefficients c_0 … c_(L-1): [{coefficients}] (also in the run's `layer_lr.json`)",
        ]
    lora = info.lora or {}
    return [
        f"- Method: LoRA on q, k, v, o, gate, up, down of every LLM layer (r = {lora.get('r')}, "
        f"α = {lora.get('alpha')}, dropout = {lora.get('dropout')}); the speech adaptor trained fully; "
        "the Whisper encoder frozen. Merged into the weights in this folder.",
    ]


def _training_lines(info: TrainingInfo) -> str:
    lines = [
        f"- Base model: `{info.base_model}`",
        *_method_lines(info),
        f"- Data: `{info.train_data}`; input: {info.input}"
        + (f" ({info.mix_text_ratio:.0%} of the records as text)" if info.mix_text_ratio else "")
        + (f"; {info.transcript_ratio:.0%} of the speech rows repeat the question (transcript task)"
           if info.transcript_ratio else ""),
        f"- Optimisation: lr {info.learning_rate:g} ({info.lr_scheduler}, warmup {info.warmup:g}), "
        f"{info.epochs:g} epochs, {info.global_step} steps, effective batch {info.effective_batch_size}, {info.precision}",
    ]
    if info.adaptor_lr is not None:
        lines.append(f"- Adaptor learning rate: {info.adaptor_lr:g}")
    if info.final_train_loss is not None:
        lines.append(f"- Final training loss (response tokens): {info.final_train_loss:.4f}")
    lines += [f"- {note}" for note in info.notes]
    return "\n".join(lines)


def training_card(info: TrainingInfo, model) -> str:
    """Model card of a trained `final/` folder."""
    config = model.config
    return f"""---
library_name: transformers
tags: [speech-llama, llama-omni, speech, audio-text-to-text, {info.method}]
pipeline_tag: audio-text-to-text
---
# SpeechLlama — Stage-1 trained ({info.method})

A LLaMA-Omni Stage-1 speech LLM: Whisper encoder (frozen) → concat-{config.adaptor_downsample} adaptor →
causal LM ({config.text_config.num_hidden_layers} layers, hidden {config.text_config.hidden_size}), trained with
`accelerate launch trainers/run.py` of the speech-llama project.

## Training
{_training_lines(info)}

## Licences
{info.licences or "- those of the base model's LLM and encoder (see the base model's card)"}

## Use

```python
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained(REPO, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(REPO, trust_remote_code=True)
```
"""


def adapter_card(info: TrainingInfo, base_reference: str) -> str:
    """Model card of the LoRA `adapter/` folder."""
    return f"""---
library_name: peft
base_model: {base_reference}
tags: [speech-llama, llama-omni, lora, speech]
---
# SpeechLlama LoRA adapter (Stage 1)

LoRA adapters for the LLM plus the fully trained speech adaptor (`modules_to_save`), for the base
SpeechLlama model `{base_reference}`.

## Training
{_training_lines(info)}

## Licences
{info.licences or "- those of the base model's LLM and encoder (see the base model's card)"}

## Use

```python
from transformers import AutoModel

model = AutoModel.from_pretrained(ADAPTER_REPO, trust_remote_code=True)  # loads the base, attaches the adapter
# or: peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE, trust_remote_code=True), ADAPTER_REPO)
```
The merged model (same outputs, no peft needed) is the run's `final/` folder.
"""


__all__ = ["ADAPTER_DIR", "FINAL_DIR", "NonFiniteWeightsError", "TrainingInfo", "adapter_card", "base_licences", "base_model_reference", "export_full",
           "export_lora", "refuse_non_finite", "training_card"]
