"""The importance artifact: `X.safetensors` (one fp32 tensor per analysed parameter) + `X.json`.

Contract (docs/model.md, "Contracts": the importance artifact): the tensors are keyed by the parameter's name in
the model (e.g. ``language_model.model.layers.3.mlp.down_proj.weight``) and have its shape; the
JSON summary holds ``model``, ``input``, ``num_samples``, ``num_tokens``, ``reduction``,
``layers`` (``I_l`` = Σ importance over decoder layer ``l``), ``modules`` (``{suffix:
[per-layer sums]}``, suffix = the name after ``layers.{l}.``) and ``created``; this engine adds
``params`` (the selection regex), ``skipped_batches``, ``num_parameters`` and ``other`` (sums of
analysed parameters outside the decoder layers, e.g. embeddings).

Both files are written atomically (a temporary sibling renamed into place with ``os.replace``),
so a reader never sees a half-written artifact. A sharded (FSDP) estimate is written by
`save_artifact_gathered`: one parameter at a time is gathered from the ranks and streamed into the
file, so no rank ever holds more than one full tensor besides its shards.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from speech_llama.files import atomic_write, atomic_write_json
from speech_llama.parameters import layer_and_module

logger = logging.getLogger("importance")

# Every parameter of the LLM's decoder layers (the paper's analysed set).
DEFAULT_PARAMS = r"language_model\.model\.layers\."
SUMMARY_KEYS = ("model", "input", "num_samples", "num_tokens", "reduction", "layers", "modules", "created")


def json_path_for(path: str | os.PathLike) -> Path:
    """`X.safetensors` → `X.json` (the summary that travels with the tensors)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: an importance artifact must end in .safetensors")
    return path.with_suffix(".json")


def summarize(importances: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, Any]:
    """Per-layer and per-module sums of |importance|.

    Args:
        importances: name → tensor (any shape), as stored in the artifact.
        num_layers: L, the number of decoder layers (layers never analysed sum to 0).
    Returns:
        ``{"layers": [I_0 … I_{L-1}], "modules": {suffix: [L sums]}, "other": {name: sum}}``;
        sums are float64 Python floats.
    Raises:
        ValueError: a parameter names a layer index ≥ ``num_layers``.
    """
    return summarize_totals({name: tensor_total(tensor) for name, tensor in importances.items()}, num_layers)


def tensor_total(tensor: torch.Tensor) -> float:
    """Σ |importance| of one tensor, in float64."""
    return float(tensor.detach().abs().sum(dtype=torch.float64))


def summarize_totals(totals: Mapping[str, float], num_layers: int) -> dict[str, Any]:
    """`summarize` from each parameter's Σ |importance| (``totals``: name → float)."""
    layers = [0.0] * num_layers
    modules: dict[str, list[float]] = {}
    other: dict[str, float] = {}
    for name, total in totals.items():
        located = layer_and_module(name)
        if located is None:
            other[name] = total
            continue
        layer, suffix = located
        if layer >= num_layers:
            raise ValueError(f"{name}: layer {layer} but the model has {num_layers} decoder layers")
        layers[layer] += total
        modules.setdefault(suffix, [0.0] * num_layers)[layer] += total
    return {"layers": layers, "modules": dict(sorted(modules.items())), "other": other}


def build_summary(
    importances: Mapping[str, torch.Tensor],
    *,
    num_layers: int,
    model: str,
    input: str,
    num_samples: int,
    num_tokens: int,
    reduction: str,
    **extra: Any,
) -> dict[str, Any]:
    """The artifact's JSON summary (contract keys first, then ``extra``, e.g. skipped_batches)."""
    totals = {name: tensor_total(tensor) for name, tensor in importances.items()}
    return summary_from_totals(totals, int(sum(t.numel() for t in importances.values())), num_layers=num_layers,
                               model=model, input=input, num_samples=num_samples, num_tokens=num_tokens,
                               reduction=reduction, **extra)


def summary_from_totals(
    totals: Mapping[str, float],
    num_parameters: int,
    *,
    num_layers: int,
    model: str,
    input: str,
    num_samples: int,
    num_tokens: int,
    reduction: str,
    **extra: Any,
) -> dict[str, Any]:
    """`build_summary` from each parameter's Σ |importance| and the number of analysed values."""
    sums = summarize_totals(totals, num_layers)
    return {
        "model": model,
        "input": input,
        "num_samples": int(num_samples),
        "num_tokens": int(num_tokens),
        "reduction": reduction,
        "layers": sums["layers"],
        "modules": sums["modules"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_parameters": int(num_parameters),
        "other": sums["other"],
        **extra,
    }


def save_artifact(path: str | os.PathLike, importances: Mapping[str, torch.Tensor], summary: Mapping[str, Any]) -> Path:
    """Write `X.safetensors` (fp32, contiguous) and `X.json`, each atomically.

    The tensors go first: a JSON next to the tensors always describes the tensors beside it
    once both writes finished (an interrupted run leaves at most a stale JSON, never a torn one).
    """
    path = Path(path)
    json_path = json_path_for(path)
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ValueError(f"summary lacks the contract keys {missing}")
    tensors = {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in importances.items()}
    metadata = {"format": "speech-llama-importance", "reduction": str(summary["reduction"]), "input": str(summary["input"])}
    atomic_write(path, lambda temp: save_file(tensors, temp, metadata=metadata))
    atomic_write_json(json_path, dict(summary))
    return path


def write_safetensors(path: str | os.PathLike, shapes: Mapping[str, tuple[int, ...]],
                      tensors: Iterable[tuple[str, torch.Tensor]], metadata: Mapping[str, str]) -> None:
    """Write an fp32 safetensors file tensor by tensor: the header (from ``shapes``) first, then each
    tensor's bytes as ``tensors`` yields it, in the order of ``shapes``.

    Raises:
        ValueError: a tensor arrives out of order or with another shape than announced.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data buffer starts 8-byte aligned
    expected = iter(shapes.items())
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name, tensor in tensors:
            want, shape = next(expected, (None, None))
            if name != want or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"safetensors stream: got {name!r} {tuple(tensor.shape)}, expected {want!r} {shape}")
            handle.write(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    missing = [name for name, _ in expected]
    if missing:
        raise ValueError(f"safetensors stream ended before {missing[:3]}")


def save_artifact_gathered(
    path: str | os.PathLike,
    importances: Mapping[str, torch.Tensor],
    summary_fields: Mapping[str, Any],
    late_fields: Callable[[], Mapping[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """Write the artifact of a sharded (FSDP2) estimate; every rank must call it.

    Each parameter's DTensor is gathered in turn (``full_tensor``, one all-gather per parameter, in
    name order), written by rank 0 into `X.safetensors` and dropped before the next one, so a rank
    holds its shards plus at most one full tensor. The per-layer sums come from the gathered tensors.

    Args:
        importances: name → DTensor (each rank's shard of |θ·g|).
        summary_fields: `summary_from_totals` keyword arguments (num_layers, model, input, …).
        late_fields: called on every rank after the tensors are written (it may use collectives,
            e.g. gathering each rank's peak memory); its fields join the summary.
    Returns:
        The summary on rank 0, None on the other ranks.
    """
    import torch.distributed as dist

    path = Path(path)
    json_path = json_path_for(path)
    rank = dist.get_rank()
    names = sorted(importances)
    shapes = {name: tuple(importances[name].shape) for name in names}
    totals: dict[str, float] = {}

    def gathered() -> Iterator[tuple[str, torch.Tensor]]:
        for name in names:
            full = importances[name].full_tensor()  # collective: every rank gathers, rank 0 keeps it
            if rank == 0:
                totals[name] = tensor_total(full)
                yield name, full
            del full

    metadata = {"format": "speech-llama-importance", "reduction": str(summary_fields["reduction"]),
                "input": str(summary_fields["input"])}
    if rank == 0:
        atomic_write(path, lambda temp: write_safetensors(temp, shapes, gathered(), metadata))
    else:
        for _ in gathered():
            pass
    extra = dict(late_fields()) if late_fields is not None else {}
    if rank != 0:
        return None
    summary = summary_from_totals(totals, sum(math.prod(shape) for shape in shapes.values()),
                                  **{**summary_fields, **extra})
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ValueError(f"summary lacks the contract keys {missing}")
    atomic_write_json(json_path, summary)
    return summary


@dataclass
class ImportanceArtifact:
    """A stored artifact opened lazily: tensors are read one at a time from the safetensors file.

    Attributes:
        path: the `.safetensors` file.
        summary: the parsed `.json` summary.
        shapes: name → shape of every stored tensor, in file order.
    """

    path: Path
    summary: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]

    def tensor(self, name: str) -> torch.Tensor:
        """One importance tensor (fp32)."""
        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor(name).float()

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every stored parameter, reading one tensor at a time."""
        with safe_open(str(self.path), framework="pt") as handle:
            for name in self.shapes:
                yield name, handle.get_tensor(name).float()

    def load_all(self) -> dict[str, torch.Tensor]:
        """All tensors in memory (one copy), checked finite and non-negative."""
        loaded = {}
        for name, tensor in self.tensors():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{self.path}: importance of {name} has non-finite values")
            if (tensor < 0).any():
                raise ValueError(f"{self.path}: importance of {name} has negative values (expected |θ·g|)")
            loaded[name] = tensor
        return loaded

    @property
    def num_layers(self) -> int:
        return len(self.summary["layers"])


def load_artifact(path: str | os.PathLike) -> ImportanceArtifact:
    """Open `X.safetensors` and its `X.json`.

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: the JSON lacks a contract key.
    """
    path = Path(path)
    json_path = json_path_for(path)
    for required in (path, json_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: no such file (an importance artifact is X.safetensors + X.json)")
    try:
        summary = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{json_path}: not a readable JSON summary ({error}); re-run `speech-llama importance`") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{json_path}: expected a JSON object (the artifact summary), got {type(summary).__name__}")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ValueError(f"{json_path}: summary lacks the contract keys {missing}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error type for truncated or foreign files
        raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(error).split())}); it may be truncated: "
                         "re-run `speech-llama importance`") from None
    return ImportanceArtifact(path=path, summary=summary, shapes=shapes)


def check_layer_coverage(shapes: Mapping[str, tuple[int, ...]], model: torch.nn.Module, summary: Mapping[str, Any] | None,
                         where: str = "artifact") -> list[int]:
    """Decoder layers of ``model`` the artifact holds no tensor for (returned; logged as a warning).

    A layer the summary gives importance to but whose tensors are all missing means the file was
    cut or edited: refused. A layer never analysed (``--params`` left it out) is only warned about,
    since deactivation then never zeroes anything in it.

    Raises:
        ValueError: a layer with importance in the summary has no tensors in the file.
    """
    model_layers = sorted({located[0] for name, _ in model.named_parameters() if (located := layer_and_module(name))})
    covered = {located[0] for name in shapes if (located := layer_and_module(name))}
    missing = [layer for layer in model_layers if layer not in covered]
    if not covered or not missing:
        return missing
    sums = list(summary.get("layers") or []) if summary else []
    cut = [layer for layer in missing if layer < len(sums) and isinstance(sums[layer], (int, float)) and sums[layer] > 0]
    if cut:
        raise ValueError(f"{where}: the summary gives decoder layer(s) {cut} importance but the file holds no tensor for "
                         "them; the artifact is incomplete: re-run `speech-llama importance`")
    logger.warning("%s: no importance for decoder layer(s) %s (not analysed); they are never zeroed", where, missing)
    return missing


def check_against_model(shapes: Mapping[str, tuple[int, ...]], model: torch.nn.Module, where: str = "artifact",
                        summary: Mapping[str, Any] | None = None) -> None:
    """Every stored tensor must name a parameter of ``model`` with the same shape; with ``summary``,
    decoder layers without any tensor are checked too (`check_layer_coverage`).

    Raises:
        ValueError: naming the first mismatch — a name the model lacks, or the parameter's
            expected shape and the shape found in the artifact.
    """
    parameters = dict(model.named_parameters())
    for name, shape in shapes.items():
        if name not in parameters:
            close = [known for known in parameters if known.endswith(name.split(".", 1)[-1])][:3]
            hint = f"; similar names in the model: {close}" if close else ""
            raise ValueError(f"{where}: parameter {name!r} (shape {tuple(shape)}) is not in the model{hint}")
        expected = tuple(parameters[name].shape)
        if expected != tuple(shape):
            raise ValueError(f"{where}: parameter {name!r}: the model expects shape {expected}, the artifact has {tuple(shape)}")
    if summary is not None:
        check_layer_coverage(shapes, model, summary, where)
