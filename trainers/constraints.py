"""Importance per parameter in training: region freezing and importance anchoring (Full-FT otherwise).

- ``region_freeze``: the top fraction p of the analysed parameters by the base model's importance
  (entries, whole rows or whole columns; over all matrices or per matrix, as `deactivate` selects)
  get no update — the "core region" of Zhang et al. (ACL 2024), located with the paper's Taylor
  importance. Their gradients are zeroed before clipping (so they neither count in the gradient norm
  nor ever enter AdamW's moments) and their base values are written back after every optimizer step
  (so weight decay cannot move them): they stay bit-identical to the base model.
- ``importance_anchor``: the gradient of λ Σ Ĩ_i (θ_i − θ_i⁰)² is added to the loss's gradient
  before clipping — an EWC / MAS-style penalty with the Taylor importance in place of the Fisher.
  Ĩ = I / mean(I) over all analysed entries, so λ is the pull on an entry of average importance.
  With ``weighting="uniform"`` every analysed entry has Ĩ = 1: L2-SP (Li et al., ICML 2018), the control
  that says whether the importance weighting, rather than the anchoring, is what helps.

Both act on each parameter's local tensor: the whole tensor in one process or under DDP, the rank's
rows under FSDP2 (dim-0 shards), so the same code serves every launch. θ⁰ is read from the base
model's safetensors files (a resumed run anchors to the same weights, not to its checkpoint's).

Memory per rank: region_freeze holds 12 bytes per frozen entry it owns (int64 flat index + fp32
value); importance_anchor holds 8 bytes per analysed entry it owns (fp32 θ⁰ and Ĩ).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from importance.artifact import json_path_for, load_artifact
from importance.deactivate import build_selection, fraction_count

logger = logging.getLogger(__name__)

CONSTRAINED_METHODS = ("region_freeze", "importance_anchor")
REGION_UNITS = ("entry", "row", "column")
REGION_SELECTIONS = ("global", "per_matrix")
ANCHOR_WEIGHTINGS = ("importance", "uniform")


class ConstraintError(ValueError):
    """An importance artifact or base model that cannot constrain this run; the message names it."""


# --- which entries ----------------------------------------------------------------------------------------------


def artifact_path(importance: str | os.PathLike) -> Path:
    """The ``X.safetensors`` of an importance artifact given as ``X.safetensors`` or its summary ``X.json``."""
    path = Path(importance)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file() or not json_path_for(path).is_file():
        raise ConstraintError(f"importance {importance}: expected an importance artifact X.safetensors with its X.json "
                              "(written by `speech-llama importance`)")
    return path


def check_region(fraction: float, selection: str, unit: str) -> None:
    """Raise `ConstraintError` (one line, naming the key) for a region that cannot be selected."""
    if not 0 < fraction < 1:
        raise ConstraintError(f"region_fraction must be in (0, 1), got {fraction}")
    if selection not in REGION_SELECTIONS:
        raise ConstraintError(f"unknown region_selection {selection!r}; choose one of {', '.join(REGION_SELECTIONS)}")
    if unit not in REGION_UNITS:
        raise ConstraintError(f"unknown region_unit {unit!r}; choose one of {', '.join(REGION_UNITS)}")
    if unit != "entry" and selection == "global":
        raise ConstraintError(f"region_unit {unit} ranks rows or columns inside each matrix: use region_selection "
                              "per_matrix")


def region_indices(importance: str | os.PathLike, fraction: float, selection: str = "global",
                   unit: str = "entry") -> dict[str, torch.Tensor]:
    """Flat indices (int64, sorted) of the frozen region in each analysed parameter.

    Args:
        importance: the base model's importance artifact (X.safetensors or X.json).
        fraction: p, the share of analysed entries frozen (0 < p < 1).
        selection: ``global`` (the top p of all entries together) or ``per_matrix`` (the top p of each).
        unit: ``entry``, or whole ``row`` / ``column`` of 2-D matrices ranked by their summed importance
            (round(p · rows) rows per matrix; per matrix only). 1-D tensors (norms) fall back to entries.
    Raises:
        ConstraintError: a value out of range or a combination that has no meaning.
    """
    check_region(fraction, selection, unit)
    importances = load_artifact(artifact_path(importance)).load_all()
    if unit == "entry":
        return build_selection(importances, fraction, "top", selection)
    return {name: _lines(tensor, fraction, unit) for name, tensor in importances.items()}


def _lines(tensor: torch.Tensor, fraction: float, unit: str) -> torch.Tensor:
    """Flat indices of the top round(p · n) rows (or columns) of a matrix by summed importance."""
    if tensor.dim() != 2:
        return build_selection({"t": tensor}, fraction, "top", "per_matrix").get("t", torch.empty(0, dtype=torch.long))
    rows, columns = tensor.shape
    scores = tensor.sum(1) if unit == "row" else tensor.sum(0)
    count = fraction_count(fraction, scores.numel())
    chosen = torch.topk(scores, count).indices.sort().values if count else torch.empty(0, dtype=torch.long)
    if unit == "row":
        flat = (chosen[:, None] * columns + torch.arange(columns)).reshape(-1)
    else:
        flat = (torch.arange(rows)[:, None] * columns + chosen[None, :]).reshape(-1)
    return flat.sort().values


def normalised_importance(importance: str | os.PathLike, weighting: str = "importance"
                          ) -> tuple[dict[str, torch.Tensor], float]:
    """(name → Ĩ = I / mean I over all analysed entries, that mean); `uniform`: Ĩ = 1 on the same entries."""
    check_anchor_weighting(weighting)
    importances = load_artifact(artifact_path(importance)).load_all()
    if weighting == "uniform":
        return {name: torch.ones_like(tensor, dtype=torch.float32) for name, tensor in importances.items()}, 1.0
    count = sum(tensor.numel() for tensor in importances.values())
    mean = sum(float(tensor.double().sum()) for tensor in importances.values()) / max(count, 1)
    if not mean > 0:
        raise ConstraintError(f"importance {importance}: every analysed entry has importance 0; nothing to anchor")
    return {name: tensor / mean for name, tensor in importances.items()}, mean


# --- local tensors (one process, DDP, FSDP2) ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalRows:
    """The rows of a parameter this process holds: ``first`` … ``first + count − 1`` of dim 0."""

    first: int
    count: int
    row_size: int  # entries per row (1 for 1-D tensors)

    @property
    def flat_range(self) -> tuple[int, int]:
        return self.first * self.row_size, (self.first + self.count) * self.row_size


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The process's own storage of a parameter or gradient (its shard under FSDP2)."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_rows(parameter: torch.Tensor, name: str) -> LocalRows:
    """Which rows of ``parameter`` this process holds (all of them unless it is an FSDP2 dim-0 shard).

    Raises:
        ConstraintError: a DTensor sharded other than on dim 0 (not FSDP2's layout).
    """
    from torch.distributed.tensor import DTensor, Shard

    shape = tuple(parameter.shape)
    row_size = math.prod(shape[1:]) if len(shape) > 1 else 1
    if not isinstance(parameter, DTensor):
        return LocalRows(0, shape[0] if shape else 1, row_size)
    if any(not (isinstance(p, Shard) and p.dim == 0) and not p.is_replicate() for p in parameter.placements):
        raise ConstraintError(f"{name}: sharded as {parameter.placements}; region_freeze / importance_anchor "
                              "support FSDP2's dim-0 shards only")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, offset = compute_local_shape_and_global_offset(parameter.shape, parameter.device_mesh,
                                                                parameter.placements)
    return LocalRows(offset[0] if offset else 0, local_shape[0] if local_shape else 1, row_size)


def base_weight_files(model_name_or_path: str | os.PathLike) -> list[Path]:
    """The base model's safetensors files (a local folder, or a Hub id's cached snapshot)."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(model_name_or_path), allow_patterns=["*.safetensors", "*.json"]))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConstraintError(f"{model_name_or_path}: no .safetensors files to read the base weights θ⁰ from")
    return files


def read_base_rows(files: list[Path], names: list[str], rows: Mapping[str, LocalRows]) -> dict[str, torch.Tensor]:
    """name → this process's rows of the base weight, flattened fp32 (read as slices: no whole copy)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in set(names) & set(handle.keys()):
                part = rows[name]
                found[name] = handle.get_slice(name)[part.first:part.first + part.count].float().reshape(-1)
    missing = [name for name in names if name not in found]
    if missing:
        raise ConstraintError(f"the base model's weights lack {missing[:3]} (of {len(missing)}); the importance "
                              "artifact must come from the model being trained")
    return found


# --- the constraints ----------------------------------------------------------------------------------------------


class GradientConstraint:
    """Edits each constrained parameter's local gradient once per optimizer step (before clipping), and
    may repair its values after the step. Subclasses fill ``self.parameters`` (name → parameter)."""

    def __init__(self):
        self.parameters: dict[str, torch.nn.Parameter] = {}
        self._edited = False

    def prepare_gradients(self) -> None:
        """Edit the gradients of this step (idempotent until `after_step`)."""
        if self._edited:
            return
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                if parameter.grad is not None:  # view, not reshape: an edit must never land in a copy
                    self._edit(name, local_tensor(parameter).view(-1), local_tensor(parameter.grad).view(-1))
        self._edited = True

    def after_step(self) -> None:
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                self._repair(name, local_tensor(parameter).view(-1))
        self._edited = False

    def _bind(self, model: torch.nn.Module, names: list[str], base_files: list[Path]
              ) -> tuple[dict[str, LocalRows], dict[str, torch.Tensor]]:
        """Take the named parameters of ``model``; (the rows each holds here, those rows of θ⁰ flattened)."""
        self.parameters = _resolve(model, names)
        rows = {name: local_rows(parameter, name) for name, parameter in self.parameters.items()}
        return rows, read_base_rows(base_files, names, rows)

    def _edit(self, name: str, values: torch.Tensor, gradient: torch.Tensor) -> None:
        raise NotImplementedError

    def _repair(self, name: str, values: torch.Tensor) -> None:
        pass

    def describe(self) -> dict:
        raise NotImplementedError


def attach_to_optimizer(optimizer: torch.optim.Optimizer, constraint: Callable[[], GradientConstraint]) -> None:
    """Run on every `optimizer.step()` the gradient edit (if clipping has not run it) and the repair of the
    constraint ``constraint()`` returns then (the trainer builds it on first use)."""
    optimizer.register_step_pre_hook(lambda *_: constraint().prepare_gradients())
    optimizer.register_step_post_hook(lambda *_: constraint().after_step())


def check_anchor_strength(strength: float) -> None:
    """Raise `ConstraintError` (one line) for a λ that cannot anchor."""
    if not strength > 0:
        raise ConstraintError(f"anchor_lambda must be > 0, got {strength}")


def check_anchor_weighting(weighting: str) -> None:
    if weighting not in ANCHOR_WEIGHTINGS:
        raise ConstraintError(f"anchor_weighting {weighting!r}: choose one of {', '.join(ANCHOR_WEIGHTINGS)}")


def _resolve(model: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Parameter]:
    parameters = dict(model.named_parameters())
    unknown = [name for name in names if name not in parameters]
    if unknown:
        raise ConstraintError(f"the importance artifact names parameters the model lacks: {unknown[:3]} "
                              f"(of {len(unknown)}); measure importance on this model")
    frozen = [name for name in names if not parameters[name].requires_grad]
    if frozen:
        raise ConstraintError(f"{frozen[:3]} are not trained in this run; region_freeze / importance_anchor "
                              "constrain trained LLM parameters")
    return {name: parameters[name] for name in names}


def _local_indices(indices: torch.Tensor, rows: LocalRows) -> torch.Tensor:
    start, end = rows.flat_range
    inside = indices[(indices >= start) & (indices < end)]
    return inside - start


class RegionFreeze(GradientConstraint):
    """The region's entries get zero gradient and are written back to their base values after each step."""

    def __init__(self, model: torch.nn.Module, indices: Mapping[str, torch.Tensor], base_files: list[Path]):
        super().__init__()
        indices = {name: flat for name, flat in indices.items() if flat.numel()}
        rows, base = self._bind(model, list(indices), base_files)
        self.local: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        for name, parameter in self.parameters.items():
            local = _local_indices(indices[name], rows[name]).to(local_tensor(parameter).device)
            self.local[name] = local
            self.values[name] = base[name][local.cpu()].to(local_tensor(parameter).device, parameter.dtype)
        self.total = sum(int(flat.numel()) for flat in indices.values())

    def _edit(self, name: str, values: torch.Tensor, gradient: torch.Tensor) -> None:
        gradient[self.local[name]] = 0

    def _repair(self, name: str, values: torch.Tensor) -> None:
        values[self.local[name]] = self.values[name]

    def describe(self) -> dict:
        held = sum(int(local.numel()) for local in self.local.values())
        return {"frozen_entries": self.total, "frozen_here": held, "bytes_here": 12 * held}


class ImportanceAnchor(GradientConstraint):
    """Adds 2 λ Ĩ (θ − θ⁰) to each analysed parameter's gradient (the gradient of λ Σ Ĩ (θ − θ⁰)²)."""

    def __init__(self, model: torch.nn.Module, normalised: Mapping[str, torch.Tensor], base_files: list[Path],
                 strength: float):
        super().__init__()
        check_anchor_strength(strength)
        self.strength = strength
        rows, base = self._bind(model, list(normalised), base_files)
        self.anchor: dict[str, torch.Tensor] = {}
        self.weight: dict[str, torch.Tensor] = {}
        for name, parameter in self.parameters.items():
            start, end = rows[name].flat_range
            device = local_tensor(parameter).device
            self.anchor[name] = base[name].to(device)
            self.weight[name] = normalised[name].reshape(-1)[start:end].to(device)

    def _edit(self, name: str, values: torch.Tensor, gradient: torch.Tensor) -> None:
        pull = (values.float() - self.anchor[name]).mul_(self.weight[name]).mul_(2 * self.strength)
        gradient.add_(pull.to(gradient.dtype))

    def penalty(self) -> float:
        """λ Σ Ĩ (θ − θ⁰)² over the entries this process holds."""
        with torch.no_grad():
            return self.strength * sum(float((self.weight[name] * (local_tensor(p).reshape(-1).float()
                                                                   - self.anchor[name]) ** 2).sum())
                                       for name, p in self.parameters.items())

    def describe(self) -> dict:
        held = sum(int(anchor.numel()) for anchor in self.anchor.values())
        return {"anchored_entries_here": held, "bytes_here": 8 * held, "lambda": self.strength}


def build_constraint(method: str, model: torch.nn.Module, importance: str | os.PathLike,
                     model_name_or_path: str | os.PathLike, *, fraction: float = 0.01, selection: str = "global",
                     unit: str = "entry", strength: float = 1.0, weighting: str = "importance"
                     ) -> GradientConstraint | None:
    """The constraint of ``method`` on ``model`` (already sharded under FSDP2), or None for other methods."""
    if method not in CONSTRAINED_METHODS:
        return None
    files = base_weight_files(model_name_or_path)
    if method == "region_freeze":
        constraint = RegionFreeze(model, region_indices(importance, fraction, selection, unit), files)
    else:
        constraint = ImportanceAnchor(model, normalised_importance(importance, weighting)[0], files, strength)
    logger.info("%s: %s", method, json.dumps(constraint.describe()))
    return constraint


__all__ = [
    "ANCHOR_WEIGHTINGS",
    "CONSTRAINED_METHODS",
    "ConstraintError",
    "GradientConstraint",
    "ImportanceAnchor",
    "LocalRows",
    "REGION_SELECTIONS",
    "REGION_UNITS",
    "RegionFreeze",
    "artifact_path",
    "base_weight_files",
    "attach_to_optimizer",
    "build_constraint",
    "check_anchor_strength",
    "check_anchor_weighting",
    "check_region",
    "local_rows",
    "normalised_importance",
    "region_indices",
]
