"""Pure analysis of importance artifacts (no plotting, no file writing; reused by the Space).

- layer / module profiles: I_l / Σ_j I_j (the distribution of importance over depth);
- shift between two profiles p (before) and q (after): Jensen–Shannon divergence (base 2, so in
  [0, 1]), Spearman ρ over layers, peak layers, share of the middle and last third of layers;
- rank clustering: share of a matrix's importance mass in its top 5 % rows / columns, against the
  5 % a uniform spread would give;
- max pooling of a large matrix for display (≤ 256 × 256), row/column marginals;
- parameter change |Δθ| between two checkpoints, per layer and per matrix (read tensor by tensor).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from scipy.stats import spearmanr

from speech_llama.parameters import layer_and_module

from .artifact import DEFAULT_PARAMS, ImportanceArtifact

TOP_SHARE = 0.05


# --- profiles and shift --------------------------------------------------------------------


def normalised(values: Sequence[float]) -> np.ndarray:
    """(L,) non-negative sums → (L,) shares summing to 1.

    Raises:
        ValueError: negative or non-finite values, or all zero (no importance to distribute).
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"a profile is a non-empty 1-D sequence, got shape {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError("a profile must hold finite, non-negative sums")
    total = array.sum()
    if total <= 0:
        raise ValueError("a profile with zero total importance cannot be normalised")
    return array / total


def layer_profile(summary: Mapping[str, Any]) -> np.ndarray:
    """(L,) I_l / Σ I from an artifact summary's ``layers``."""
    return normalised(summary["layers"])


def module_profiles(summary: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """suffix → (L,) that module's per-layer sums over its own total (modules with zero total skipped)."""
    return {suffix: normalised(sums) for suffix, sums in summary["modules"].items() if sum(sums) > 0}


def module_shares(summary: Mapping[str, Any]) -> dict[str, float]:
    """suffix → share of the whole decoder's importance held by that module type."""
    total = float(sum(summary["layers"]))
    return {suffix: float(sum(sums)) / total for suffix, sums in summary["modules"].items()} if total > 0 else {}


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen–Shannon divergence in bits between two distributions of equal length: 0 … 1."""
    p, q = normalised(p), normalised(q)
    if p.shape != q.shape:
        raise ValueError(f"profiles differ in length: {p.size} vs {q.size} layers")
    middle = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        keep = a > 0  # 0 · log 0 = 0; b > 0 wherever a > 0 since b is the mixture
        return float(np.sum(a[keep] * np.log2(a[keep] / b[keep])))

    return max(0.0, 0.5 * kl(p, middle) + 0.5 * kl(q, middle))


def third_shares(profile: Sequence[float]) -> dict[str, float]:
    """Share of the profile in the first / middle / last third of the layers.

    Layers are split with ``np.array_split`` (30 layers → 10 / 10 / 10; 4 → 2 / 1 / 1).
    """
    p = normalised(profile)
    first, middle, last = np.array_split(p, 3)
    return {"first": float(first.sum()), "middle": float(middle.sum()), "last": float(last.sum())}


def spearman(p: Sequence[float], q: Sequence[float]) -> float | None:
    """Spearman rank correlation over layers; None when either profile is constant."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.std() == 0 or q.std() == 0:
        return None
    return float(spearmanr(p, q).statistic)


def shift_metrics(before: Sequence[float], after: Sequence[float]) -> dict[str, Any]:
    """How the layer distribution moved from ``before`` to ``after`` (per-layer sums or shares)."""
    p, q = normalised(before), normalised(after)
    thirds_p, thirds_q = third_shares(p), third_shares(q)
    return {
        "js_divergence": js_divergence(p, q),
        "spearman": spearman(p, q),
        "peak_layer": {"before": int(p.argmax()), "after": int(q.argmax())},
        "middle_share": {"before": thirds_p["middle"], "after": thirds_q["middle"]},
        "last_share": {"before": thirds_p["last"], "after": thirds_q["last"]},
        "first_share": {"before": thirds_p["first"], "after": thirds_q["first"]},
    }


# --- rank clustering -----------------------------------------------------------------------


def _top_share(mass: torch.Tensor, top: float) -> tuple[float, float, int]:
    """(share of the total in the top ⌈top·n⌉ entries, that count / n, the count)."""
    count = max(1, math.ceil(top * mass.numel()))
    share = float(mass.topk(count).values.sum(dtype=torch.float64) / mass.sum(dtype=torch.float64))
    return share, count / mass.numel(), count


def rank_clustering(matrix: torch.Tensor, top: float = TOP_SHARE) -> dict[str, Any] | None:
    """Concentration of a weight matrix's importance in a few rows and columns.

    Args:
        matrix: (R, C) non-negative importance of one weight matrix (R = output features).
        top: share of rows / columns counted as "top" (0.05 → the top 5 %).
    Returns:
        ``row_share`` / ``col_share``: mass in the top ⌈top·R⌉ rows / ⌈top·C⌉ columns;
        ``row_uniform`` / ``col_uniform``: the same under a uniform spread (≈ top);
        ``row_ratio`` / ``col_ratio``: share / uniform (1 = no clustering); None for an all-zero matrix.
    """
    if matrix.dim() != 2:
        raise ValueError(f"rank clustering needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    matrix = matrix.float()
    if float(matrix.sum()) <= 0:
        return None
    row_share, row_uniform, rows = _top_share(matrix.sum(1), top)
    col_share, col_uniform, cols = _top_share(matrix.sum(0), top)
    return {
        "shape": list(matrix.shape),
        "row_share": row_share,
        "col_share": col_share,
        "row_uniform": row_uniform,
        "col_uniform": col_uniform,
        "row_ratio": row_share / row_uniform,
        "col_ratio": col_share / col_uniform,
        "top_rows": rows,
        "top_cols": cols,
    }


def rank_clustering_all(tensors: Iterable[tuple[str, torch.Tensor]], top: float = TOP_SHARE) -> dict[str, dict[str, Any]]:
    """name → `rank_clustering` for every 2-D tensor (norm weights and biases are skipped)."""
    return {
        name: stats
        for name, tensor in tensors
        if tensor.dim() == 2 and (stats := rank_clustering(tensor, top)) is not None
    }


def rank_clustering_summary(per_matrix: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per module type (name suffix after ``layers.{l}.``; other names as they are): mean and
    median row/column shares and ratios across the layers, plus the uniform baseline."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for name, stats in per_matrix.items():
        located = layer_and_module(name)
        groups.setdefault(located[1] if located else name, []).append(stats)
    summary = {}
    for module, entries in sorted(groups.items()):
        row_share = np.array([e["row_share"] for e in entries])
        col_share = np.array([e["col_share"] for e in entries])
        summary[module] = {
            "matrices": len(entries),
            "row_share_mean": float(row_share.mean()),
            "row_share_median": float(np.median(row_share)),
            "col_share_mean": float(col_share.mean()),
            "col_share_median": float(np.median(col_share)),
            "row_uniform": float(np.mean([e["row_uniform"] for e in entries])),
            "col_uniform": float(np.mean([e["col_uniform"] for e in entries])),
            "row_ratio_mean": float(np.mean([e["row_ratio"] for e in entries])),
            "col_ratio_mean": float(np.mean([e["col_ratio"] for e in entries])),
        }
    return summary


# --- display helpers -----------------------------------------------------------------------


def max_pool(matrix: torch.Tensor, max_size: int = 256) -> torch.Tensor:
    """(R, C) → (min(R, max_size), min(C, max_size)) by adaptive max pooling.

    Max (not mean) pooling keeps isolated important entries visible, and the global maximum is
    preserved exactly.
    """
    if matrix.dim() != 2:
        raise ValueError(f"max_pool needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    rows, cols = matrix.shape
    target = (min(rows, max_size), min(cols, max_size))
    if target == (rows, cols):
        return matrix.float().clone()
    return torch.nn.functional.adaptive_max_pool2d(matrix.float()[None, None], target)[0, 0]


def marginals(matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(R, C) → (row sums (R,), column sums (C,)) of the full-resolution matrix."""
    matrix = matrix.double()
    return matrix.sum(1).numpy(), matrix.sum(0).numpy()


def heatmap_targets(artifact: ImportanceArtifact) -> dict[str, str]:
    """module suffix → the 2-D parameter of that module type in the layer where the module's
    importance peaks (the matrices Fig. 1 shows)."""
    targets = {}
    for suffix, sums in artifact.summary["modules"].items():
        name = next((n for n in artifact.shapes if layer_and_module(n) == (int(np.argmax(sums)), suffix)), None)
        if name is not None and len(artifact.shapes[name]) == 2:
            targets[suffix] = name
    return targets


# --- parameter change between two checkpoints ----------------------------------------------


def checkpoint_files(model_dir: str | Path) -> dict[str, Path]:
    """name → safetensors file holding it, for a model folder (single file or sharded index)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    with safe_open(str(single), framework="pt") as handle:
        return {name: single for name in handle.keys()}


def _read(file: Path, name: str) -> torch.Tensor:
    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name).float()


def matched_checkpoint_params(dir_a: str | Path, dir_b: str | Path, pattern: str = DEFAULT_PARAMS) -> tuple[dict[str, Path], dict[str, Path]]:
    """Files of the parameters matching ``pattern`` in both checkpoints, in checkpoint-A order.

    Raises:
        ValueError: nothing matches, or a matching name is missing from B.
    """
    regex = re.compile(pattern)
    files_a, files_b = checkpoint_files(dir_a), checkpoint_files(dir_b)
    names = [name for name in files_a if regex.search(name)]
    if not names:
        raise ValueError(f"{dir_a}: no parameter matches {pattern!r}")
    missing = [name for name in names if name not in files_b]
    if missing:
        raise ValueError(f"{dir_b}: lacks parameter {missing[0]!r} of {dir_a}")
    return {n: files_a[n] for n in names}, {n: files_b[n] for n in names}


def parameter_change(dir_a: str | Path, dir_b: str | Path, pattern: str = DEFAULT_PARAMS) -> dict[str, Any]:
    """Mean |θ_B − θ_A| per decoder layer and per module type, one tensor pair at a time.

    Returns:
        ``{"layers": [mean |Δθ| of layer l], "modules": {suffix: [per-layer mean]},
        "relative_layers": [Σ|Δθ| / Σ|θ_A| per layer], "parameters": N}``.
    Raises:
        ValueError: a shape differs (naming the parameter and both shapes).
    """
    files_a, files_b = matched_checkpoint_params(dir_a, dir_b, pattern)
    sums: dict[int, list[float]] = {}  # layer → [Σ|Δθ|, count, Σ|θ_A|]
    module_sums: dict[str, dict[int, list[float]]] = {}
    total = 0
    for name, file_a in files_a.items():
        located = layer_and_module(name)
        if located is None:
            continue
        a, b = _read(file_a, name), _read(files_b[name], name)
        if a.shape != b.shape:
            raise ValueError(f"parameter {name!r}: checkpoint A has shape {tuple(a.shape)}, B has {tuple(b.shape)}")
        delta = float((b - a).abs().sum(dtype=torch.float64))
        layer, suffix = located
        entry = sums.setdefault(layer, [0.0, 0, 0.0])
        entry[0] += delta
        entry[1] += a.numel()
        entry[2] += float(a.abs().sum(dtype=torch.float64))
        module_entry = module_sums.setdefault(suffix, {}).setdefault(layer, [0.0, 0])
        module_entry[0] += delta
        module_entry[1] += a.numel()
        total += a.numel()
    if not sums:
        raise ValueError(f"no decoder-layer parameter matches {pattern!r}: per-layer change needs layers.N names")
    num_layers = max(sums) + 1
    return {
        "layers": [sums[l][0] / sums[l][1] if l in sums else 0.0 for l in range(num_layers)],
        "relative_layers": [sums[l][0] / sums[l][2] if l in sums and sums[l][2] > 0 else 0.0 for l in range(num_layers)],
        "modules": {
            suffix: [per_layer[l][0] / per_layer[l][1] if l in per_layer else 0.0 for l in range(num_layers)]
            for suffix, per_layer in sorted(module_sums.items())
        },
        "parameters": total,
    }


def change_matrices(dir_a: str | Path, dir_b: str | Path, layer: int, pattern: str = DEFAULT_PARAMS) -> dict[str, torch.Tensor]:
    """|θ_B − θ_A| of every 2-D matching parameter of decoder layer ``layer`` (full resolution)."""
    files_a, files_b = matched_checkpoint_params(dir_a, dir_b, pattern)
    matrices = {}
    for name, file_a in files_a.items():
        located = layer_and_module(name)
        if located is None or located[0] != layer:
            continue
        a, b = _read(file_a, name), _read(files_b[name], name)
        if a.shape != b.shape:
            raise ValueError(f"parameter {name!r}: checkpoint A has shape {tuple(a.shape)}, B has {tuple(b.shape)}")
        if a.dim() == 2:
            matrices[name] = (b - a).abs()
    return matrices
