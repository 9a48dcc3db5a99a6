"""Importance-scaled layer-wise learning rates (the seed paper's Eq. 3, in our reading).

An importance summary (``X.json`` from the importance engine, ``layers``: [I_0 … I_{L-1}]) gives one
score per decoder layer. Each layer l learns at ``c_l · learning_rate``:

- ``minmax`` (default): ``c_l = 1 − α · (I_l − min_j I_j) / (max_j I_j − min_j I_j)`` — with α = 0.4,
  c ∈ [0.6, 1]; the most important layer learns slowest.
- ``power``: ``c_l = (I_l / min_j I_j)^(−α)`` — the least important layer keeps the full rate.
- ``softmax``: ``c = L · softmax(−α · z(I))`` with z the z-score over layers — c averages to 1.

Eq. 3 is lost in the seed text; ``minmax`` is the reading docs/training.md documents as an assumption.

This module also turns coefficients into optimizer parameter groups: one group per (decoder layer ×
decay / no-decay), the adaptor in its own groups (optionally at ``adaptor_lr``), everything else
(embeddings, final norm, LoRA-free leftovers) in a last pair of groups at the base rate.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from speech_llama.parameters import layer_and_module

SCHEMES = ("minmax", "power", "softmax")
LAYER_LR_FILE = "layer_lr.json"

_ADAPTOR_PATTERN = re.compile(r"(?:^|\.)adaptor\.")
# Wrapper segments FSDP1 and activation checkpointing insert into parameter names.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


class LayerLRError(ValueError):
    """An importance summary or Layer-LR setting cannot be used; the message says why."""


@dataclass(frozen=True)
class LayerLRSpec:
    """What ``layer_lr.json`` records: the scheme, α, the base rate and one coefficient per layer."""

    scheme: str
    alpha: float
    base_lr: float
    coefficients: list[float]
    importance: str | None = None

    def to_json(self) -> dict:
        """The ``layer_lr.json`` contract: scheme, alpha, base_lr, coefficients (+ the summary path)."""
        return asdict(self)


# --- reading the importance summary --------------------------------------------------------------


def read_layer_importance(path: str | Path, num_layers: int) -> list[float]:
    """The per-layer importance ``layers`` of a summary ``X.json``, checked against the model.

    Raises:
        LayerLRError: the file is missing or not JSON, has no ``layers`` list, holds a non-finite or
            negative value, or has a number of layers other than ``num_layers``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        raise LayerLRError(f"importance summary {path}: that is the artifact's tensors; pass its summary "
                           f"{path.with_suffix('.json')} (Layer-LR reads the per-layer sums)")
    if not path.is_file():
        raise LayerLRError(f"importance summary {path}: no such file (pass the .json summary of `speech-llama importance`)")
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerLRError(f"importance summary {path}: not valid JSON ({error})") from error
    layers = summary.get("layers") if isinstance(summary, dict) else None
    if not isinstance(layers, list):
        raise LayerLRError(f"importance summary {path}: expected a 'layers' list [I_0 … I_(L-1)]; keys found: "
                           f"{sorted(summary) if isinstance(summary, dict) else type(summary).__name__}")
    if len(layers) != num_layers:
        raise LayerLRError(
            f"importance summary {path} has {len(layers)} layers but the model's LLM has {num_layers} decoder layers; "
            "was it measured on another model?"
        )
    values = []
    for index, value in enumerate(layers):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise LayerLRError(f"importance summary {path}: layers[{index}] = {value!r}; expected a finite number >= 0")
        values.append(float(value))
    return values


# --- Eq. 3 ----------------------------------------------------------------------------------------


def layer_coefficients(importance: Sequence[float], alpha: float, scheme: str = "minmax") -> list[float]:
    """The learning-rate multipliers c_l of Eq. 3 (see the module docstring for the schemes).

    Raises:
        LayerLRError: unknown scheme, empty importance, or an α the scheme cannot use (minmax needs
            0 ≤ α < 1 so every c_l stays positive; power needs every I_l > 0).
    """
    if scheme not in SCHEMES:
        raise LayerLRError(f"unknown layer_lr_scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if len(importance) == 0:
        raise LayerLRError("the importance summary has no layers")
    if not math.isfinite(alpha) or alpha < 0:
        raise LayerLRError(f"layer_lr_alpha must be a finite number >= 0, got {alpha}")
    values = torch.tensor(list(importance), dtype=torch.float64)
    if scheme == "minmax":
        coefficients = _minmax(values, alpha)
    elif scheme == "power":
        coefficients = _power(values, alpha)
    else:
        coefficients = _softmax(values, alpha)
    check_coefficients(coefficients, f"{scheme} with layer_lr_alpha {alpha}")
    return coefficients


def check_coefficients(coefficients: Sequence[float], what: str = "the coefficients") -> None:
    """Every c_l must be a finite number > 0 (a NaN, infinite or zero rate would train nonsense or nothing).

    Raises:
        LayerLRError: naming the first bad layers and what to change.
    """
    bad = [(layer, c) for layer, c in enumerate(coefficients)
           if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0]
    if bad:
        shown = ", ".join(f"c_{layer} = {c!r}" for layer, c in bad[:4]) + (" …" if len(bad) > 4 else "")
        raise LayerLRError(
            f"Eq. 3 ({what}) gives {len(bad)} learning-rate coefficient(s) that are not finite numbers > 0 ({shown}); "
            "use a smaller layer_lr_alpha or the minmax scheme"
        )


def _minmax(values: torch.Tensor, alpha: float) -> list[float]:
    if alpha >= 1:
        raise LayerLRError(f"minmax needs layer_lr_alpha < 1 (the top layer gets 1 − α), got {alpha}")
    spread = float(values.max() - values.min())
    if spread == 0:  # all layers equally important: nothing to scale
        return [1.0] * len(values)
    return (1 - alpha * (values - values.min()) / spread).tolist()


def _power(values: torch.Tensor, alpha: float) -> list[float]:
    smallest = float(values.min())
    if smallest <= 0:
        raise LayerLRError("the power scheme divides by min_j I_j: every layer importance must be > 0")
    return (values / smallest).pow(-alpha).tolist()


def _softmax(values: torch.Tensor, alpha: float) -> list[float]:
    largest = float(values.abs().max())
    if largest > 0:  # z is scale-free; scaling first keeps the mean and std of huge sums finite
        values = values / largest
    std = float(values.std(unbiased=False))
    z = (values - values.mean()) / std if std > 0 else torch.zeros_like(values)
    return (len(values) * torch.softmax(-alpha * z, dim=0)).tolist()


def layer_lr_spec(importance_path: str | Path, num_layers: int, alpha: float, scheme: str, base_lr: float) -> LayerLRSpec:
    """Read a summary and compute its coefficients: everything ``layer_lr.json`` holds."""
    importance = read_layer_importance(importance_path, num_layers)
    coefficients = layer_coefficients(importance, alpha, scheme)
    return LayerLRSpec(scheme=scheme, alpha=alpha, base_lr=base_lr, coefficients=coefficients,
                       importance=str(importance_path))


def write_layer_lr_json(spec: LayerLRSpec, output_dir: str | Path) -> Path:
    """Write ``output_dir/layer_lr.json``; returns its path."""
    path = Path(output_dir) / LAYER_LR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    return path


# --- parameter groups -----------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """A parameter name without the segments FSDP1 / checkpoint wrappers insert."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def decoder_layer_index(name: str) -> int | None:
    """l for a parameter of decoder layer l of the LLM (``language_model.model.layers.{l}.…``), else None."""
    located = layer_and_module(canonical_name(name))
    return located[0] if located else None


def is_adaptor_parameter(name: str) -> bool:
    """True for the speech adaptor's parameters (also inside a peft ``modules_to_save`` copy)."""
    return _ADAPTOR_PATTERN.search(canonical_name(name)) is not None


def build_param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    decay_names: Iterable[str],
    base_lr: float,
    weight_decay: float,
    coefficients: Sequence[float] | None = None,
    adaptor_lr: float | None = None,
) -> list[dict]:
    """Optimizer groups with explicit ``lr``, each named (``name`` is kept in checkpoints).

    Only parameters with ``requires_grad`` are grouped. With ``coefficients`` (Layer-LR), decoder
    layer l gets ``layer{l}.decay`` / ``layer{l}.no_decay`` at ``c_l · base_lr``; without them the
    decoder layers stay in the ``other`` groups. The adaptor gets ``adaptor.*`` groups at
    ``adaptor_lr`` (or the base rate). Empty groups are left out; the order is deterministic, so a
    resumed run rebuilds the same groups its checkpoint's optimizer state refers to.

    Raises:
        LayerLRError: a trainable parameter belongs to a decoder layer the coefficients do not cover.
    """
    decay_names = set(decay_names)
    buckets: dict[str, list[torch.nn.Parameter]] = {}
    rates: dict[str, float] = {}
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        key, rate = _group_of(name, base_lr, coefficients, adaptor_lr)
        key = f"{key}.{'decay' if name in decay_names else 'no_decay'}"
        buckets.setdefault(key, []).append(parameter)
        rates[key] = rate
    return [
        {"name": key, "params": buckets[key], "lr": rates[key],
         "weight_decay": weight_decay if key.endswith(".decay") else 0.0}
        for key in sorted(buckets, key=_group_order)
    ]


def _group_of(name: str, base_lr: float, coefficients: Sequence[float] | None, adaptor_lr: float | None) -> tuple[str, float]:
    """(group key without the decay suffix, learning rate) of one parameter."""
    if is_adaptor_parameter(name):
        return "adaptor", adaptor_lr if adaptor_lr is not None else base_lr
    layer = decoder_layer_index(name) if coefficients is not None else None
    if layer is None:
        return "other", base_lr
    if layer >= len(coefficients):
        raise LayerLRError(f"parameter {name} is in decoder layer {layer} but only {len(coefficients)} coefficients were given")
    return f"layer{layer}", coefficients[layer] * base_lr


def _group_order(key: str) -> tuple[int, int, str]:
    """Layers in numeric order first, then the adaptor, then the rest."""
    stem = key.split(".")[0]
    if stem.startswith("layer"):
        return (0, int(stem[len("layer"):]), key)
    return (1 if stem == "adaptor" else 2, 0, key)


__all__ = [
    "LAYER_LR_FILE",
    "SCHEMES",
    "LayerLRError",
    "LayerLRSpec",
    "build_param_groups",
    "canonical_name",
    "check_coefficients",
    "decoder_layer_index",
    "is_adaptor_parameter",
    "layer_coefficients",
    "layer_lr_spec",
    "read_layer_importance",
    "write_layer_lr_json",
]
