"""Arguments of `trainers/run.py`: our own keys plus every `TrainingArguments` field.

A run is described by a YAML file (`trainers/configs/*.yaml`) and `--key value` overrides on the
command line; the overrides win. Both go through one `HfArgumentParser`, so every key is typed and
checked the same way, and an unknown key is an error, never silently ignored.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from speech_llama.build import DTYPES

from speech_llama.fsdp import fsdp_settings

from .constraints import (ANCHOR_WEIGHTINGS, CONSTRAINED_METHODS, REGION_SELECTIONS, REGION_UNITS, check_anchor_strength,
                          check_anchor_weighting, check_region)
from .layer_lr import SCHEMES, LayerLRError
from .trainer import refuse_deepspeed_optimizer

logger = logging.getLogger(__name__)

METHODS = ("full", "layer_lr", "lora", "adaptor", *CONSTRAINED_METHODS)
ALIGNMENT_LOSSES = ("lm", "ctc")
INPUTS = ("speech", "text")
MODEL_DTYPES = tuple(DTYPES)


class ArgumentsError(ValueError):
    """A configuration cannot describe a run; the message names the key."""


@dataclass
class ModelArguments:
    """The model and how it is trained (Stage-1 semantics: encoder frozen, adaptor + LLM trained)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a SpeechLlama model folder or Hub id (build one with `speech-llama build`)"}
    )
    method: str = field(default="full", metadata={"help": f"training method: {' | '.join(METHODS)}"})
    importance: str | None = field(
        default=None,
        metadata={"help": "the base model's importance: summary X.json (its 'layers' list) for method layer_lr; "
                          "artifact X.safetensors (or its X.json) for region_freeze / importance_anchor"},
    )
    region_fraction: float = field(default=0.01, metadata={"help": "region_freeze: share p of analysed entries frozen"})
    region_selection: str = field(
        default="global", metadata={"help": f"region_freeze: top p {' | '.join(REGION_SELECTIONS)}"}
    )
    region_unit: str = field(
        default="entry",
        metadata={"help": f"region_freeze: freeze {' | '.join(REGION_UNITS)}s (rows / columns: per_matrix, by summed "
                          "importance)"},
    )
    anchor_lambda: float = field(
        default=1.0, metadata={"help": "importance_anchor: λ of λ Σ Ĩ (θ − θ⁰)² (Ĩ: importance / its mean)"}
    )
    anchor_weighting: str = field(
        default="importance",
        metadata={"help": f"importance_anchor: Ĩ {' | '.join(ANCHOR_WEIGHTINGS)} (uniform: Ĩ = 1 on the same entries, "
                          "L2-SP: the control for the weighting)"},
    )
    layer_lr_alpha: float = field(default=0.4, metadata={"help": "α of Eq. 3"})
    layer_lr_scheme: str = field(default="minmax", metadata={"help": f"Eq. 3 reading: {' | '.join(SCHEMES)}"})
    adaptor_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the speech adaptor (default: learning_rate)"}
    )
    alignment_loss: str = field(
        default="lm",
        metadata={"help": "method adaptor only: lm (the answer loss through the frozen LLM) | ctc (adaptor frames "
                          "spell the spoken question over the LLM's embedding matrix; the LLM is not run)"},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default: 2 · lora_r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    adapter_base_model: str | None = field(
        default=None,
        metadata={"help": "base_model_name_or_path written into adapter/ (default: model_name_or_path, made "
                          "absolute when local); set the base's Hub id before publishing the adapter"},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "allow the model folder's own tokenizer / feature-extractor code (its auto_map) to run; "
                          "folders written by speech-llama need none"},
    )
    model_dtype: str = field(
        default="float32",
        metadata={"help": f"dtype the weights are loaded in ({' | '.join(MODEL_DTYPES)}); mixed precision is --bf16, "
                          "which keeps trainable weights in fp32 (frozen ones stay in this dtype)"},
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ArgumentsError("model_name_or_path is required (YAML key or --model_name_or_path)")
        if self.method not in METHODS:
            raise ArgumentsError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.layer_lr_scheme not in SCHEMES:
            raise LayerLRError(f"unknown layer_lr_scheme {self.layer_lr_scheme!r}; choose one of {', '.join(SCHEMES)}")
        if self.alignment_loss not in ALIGNMENT_LOSSES:
            raise ArgumentsError(f"unknown alignment_loss {self.alignment_loss!r}; choose one of {', '.join(ALIGNMENT_LOSSES)}")
        if self.alignment_loss == "ctc" and self.method != "adaptor":
            raise ArgumentsError("alignment_loss ctc trains the adaptor alone: it needs method adaptor")
        if self.method == "layer_lr" and not self.importance:
            raise ArgumentsError("method layer_lr needs importance: the path of an importance summary X.json")
        if self.method in CONSTRAINED_METHODS and not self.importance:
            raise ArgumentsError(f"method {self.method} needs importance: the base model's importance artifact "
                                 "X.safetensors (speech-llama importance)")
        if self.method == "region_freeze":
            check_region(self.region_fraction, self.region_selection, self.region_unit)
        if self.method == "importance_anchor":
            check_anchor_strength(self.anchor_lambda)
            check_anchor_weighting(self.anchor_weighting)
        if self.lora_r < 1:
            raise ArgumentsError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        if not 0 <= self.lora_dropout < 1:
            raise ArgumentsError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.adaptor_lr is not None and self.adaptor_lr <= 0:
            raise ArgumentsError(f"adaptor_lr must be > 0, got {self.adaptor_lr}")
        if self.model_dtype not in MODEL_DTYPES:
            raise ArgumentsError(f"unknown model_dtype {self.model_dtype!r}; choose one of {', '.join(MODEL_DTYPES)}")


@dataclass
class DataArguments:
    """Training and evaluation records (the record contract of docs/model.md) and how prompts are built."""

    train_data: str | None = field(
        default=None, metadata={"help": "records: a .jsonl (audio paths relative to it), a save_to_disk folder or a Hub id"}
    )
    eval_data: str | None = field(default=None, metadata={"help": "evaluation records (same forms as train_data)"})
    train_split: str = field(default="train", metadata={"help": "split of a DatasetDict folder or Hub dataset"})
    eval_split: str = field(default="test", metadata={"help": "split of a DatasetDict folder or Hub dataset"})
    input: str = field(default="speech", metadata={"help": "prompt input: speech (S2T) or text (T2T)"})
    mix_text_ratio: float = field(
        default=0.0, metadata={"help": "share of training records given as text (T2T) instead of speech, per record"}
    )
    transcript_ratio: float = field(
        default=0.0,
        metadata={"help": "share of speech rows trained to repeat the spoken question ('Repeat exactly what was said.') "
                          "instead of answering it: teaches the adaptor words first"},
    )
    max_length: int | None = field(default=None, metadata={"help": "cut completions so a row has at most this many tokens"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training records"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N evaluation records"})

    def __post_init__(self):
        if not self.train_data:
            raise ArgumentsError("train_data is required (YAML key or --train_data)")
        if self.input not in INPUTS:
            raise ArgumentsError(f"input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        for key in ("mix_text_ratio", "transcript_ratio"):
            if not 0 <= getattr(self, key) <= 1:
                raise ArgumentsError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        for key in ("max_length", "max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ArgumentsError(f"{key} must be >= 1, got {value}")


DATACLASSES = (ModelArguments, DataArguments, TrainingArguments)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """`[CONFIG.yaml] [--key value …]` → (model, data, training) arguments; CLI values override the YAML."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    config: dict[str, Any] = {}
    if argv and not argv[0].startswith("-"):
        config = read_config(Path(argv.pop(0)))
    parser = HfArgumentParser(DATACLASSES)
    values = {**coerce_types(config, parser), **cli_overrides(argv)}
    values = _training_defaults(values)
    _check_before_training_arguments(values)
    try:
        return parser.parse_dict(values)
    except ValueError as error:
        if "not used by the HfArgumentParser" in str(error):
            raise ArgumentsError(f"unknown configuration keys: {str(error).split(': ', 1)[-1]}") from error
        raise


def read_config(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping of argument names to values."""
    if not path.is_file():
        raise ArgumentsError(f"config {path}: no such file")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ArgumentsError(f"config {path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise ArgumentsError(f"config {path}: expected a mapping of argument names to values, got {type(config).__name__}")
    return config


def coerce_types(values: dict[str, Any], parser: HfArgumentParser) -> dict[str, Any]:
    """YAML strings converted by each argument's own type, as argparse does for the command line.

    PyYAML reads `2e-5` (no dot) as a string; `TrainingArguments` would keep it as one.
    """
    types = {action.dest: action.type for action in parser._actions if callable(action.type)}
    coerced = {}
    for key, value in values.items():
        convert = types.get(key)
        if convert is None or convert is str:
            coerced[key] = value
        elif isinstance(value, str):
            coerced[key] = _convert(convert, key, value)
        elif isinstance(value, list):
            coerced[key] = [_convert(convert, key, item) if isinstance(item, str) else item for item in value]
        else:
            coerced[key] = value
    return coerced


def _convert(convert, key: str, value: str):
    try:
        return convert(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ArgumentsError(f"config key {key}: cannot read {value!r} ({error})") from error


def cli_overrides(argv: list[str]) -> dict[str, Any]:
    """Only the `--key value` pairs given on the command line, typed by the dataclasses' parser.

    Every default is suppressed, so a key absent from the command line leaves the YAML value alone.
    """
    parser = HfArgumentParser(DATACLASSES)
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
            action.required = False
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ArgumentsError(f"unknown command-line arguments: {' '.join(unknown)}")
    return vars(namespace)


def _training_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Settings the trainer needs regardless of the config."""
    values = dict(values)
    if values.get("remove_unused_columns"):
        # The collator reads question/answers/audio; Trainer would strip them as unknown to forward().
        logger.warning("remove_unused_columns=True is overridden: the collator needs the raw record columns")
    values["remove_unused_columns"] = False
    return values


def _check_before_training_arguments(values: dict[str, Any]) -> None:
    """Checks that must run before `TrainingArguments` (which imports deepspeed when configured)."""
    if values.get("method") == "layer_lr" or values.get("adaptor_lr") is not None:
        reason = "Layer-LR" if values.get("method") == "layer_lr" else "adaptor_lr"
        refuse_deepspeed_optimizer(values.get("deepspeed"), reason)
    if values.get("fp16"):
        logger.warning("fp16 training of LLaMA-Omni Stage 1 is reported to give NaN losses; prefer bf16 (GPU) or fp32")
    mix = values.get("mix_text_ratio") or 0
    if 0 < float(mix) < 1 and (fsdp_settings() is not None or values.get("fsdp")):
        raise ArgumentsError(f"mix_text_ratio {mix} cannot be used under FSDP: a rank whose batch holds no speech row "
                             "skips the encoder's all-gathers while the others wait for them; use 0 (speech) or 1 (text)")


__all__ = ["ArgumentsError", "DataArguments", "METHODS", "ModelArguments", "cli_overrides", "coerce_types", "parse_args", "read_config"]
