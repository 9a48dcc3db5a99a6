"""What each tab shows, computed from files of the artifact folder (figures, tables, notes).

No Gradio here: every function takes paths the folder scan produced and returns matplotlib
figures and pandas tables. A problem the user can act on raises `ViewError` with a message for
the UI. The analysis itself is the importance engine's (`importance.analyse`, `importance.plots`)
and the trainer's (`trainers.layer_lr`); this module only picks and arranges.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from importance.analyse import (
    change_matrices,
    layer_profile,
    module_profiles,
    parameter_change,
    rank_clustering,
    shift_metrics,
    third_shares,
)
from importance.artifact import ImportanceArtifact, load_artifact
from importance.plots import (
    heatmap_figure,
    layer_change_figure,
    layer_profiles_figure,
    module_profiles_figure,
)
from speech_llama.parameters import layer_and_module
from trainers.constraints import region_indices

from .figures import deactivation_figure, layer_lr_figure

# importance.plots draws through pyplot, whose figure registry is not thread-safe.
_PYPLOT_LOCK = threading.Lock()


class ViewError(ValueError):
    """Something the user can fix (a choice, a missing file); the message is shown as it is."""


@lru_cache(maxsize=32)
def _cached_artifact(path: str, mtime_ns: int) -> ImportanceArtifact:
    return load_artifact(path)


def open_artifact(path: Path) -> ImportanceArtifact:
    """`load_artifact`, cached while the file is unchanged; errors become `ViewError`."""
    try:
        return _cached_artifact(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError, KeyError) as error:
        raise ViewError(f"cannot open the importance artifact {path.name}: {error}") from error


# --- layer importance -------------------------------------------------------------------------


@dataclass
class LayerView:
    layers: object  # Figure
    modules: object  # Figure
    stats: pd.DataFrame
    shift: pd.DataFrame
    note: str


def _profile_stats(label: str, summary: dict) -> dict:
    profile = layer_profile(summary)
    thirds = third_shares(profile)
    return {
        "artifact": label,
        "input": summary.get("input"),
        "records": summary.get("num_samples"),
        "response tokens": summary.get("num_tokens"),
        "layers": len(profile),
        "peak layer": int(np.argmax(profile)),
        "first third": round(thirds["first"], 4),
        "middle third": round(thirds["middle"], 4),
        "last third": round(thirds["last"], 4),
    }


def _shift_row(before_label: str, before: dict, after_label: str, after: dict) -> dict:
    metrics = shift_metrics(before["layers"], after["layers"])
    rho = metrics["spearman"]

    def pair(key: str) -> str:
        return f"{metrics[key]['before']:.3f} → {metrics[key]['after']:.3f}"

    return {
        "before → after": f"{before_label} → {after_label}",
        "JS divergence": round(metrics["js_divergence"], 4),
        "Spearman ρ": round(rho, 3) if rho is not None else "n/a (constant)",
        "peak layer": f"{metrics['peak_layer']['before']} → {metrics['peak_layer']['after']}",
        "middle share": pair("middle_share"),
        "last share": pair("last_share"),
    }


def layer_importance_view(artifacts: dict[str, Path]) -> LayerView:
    """Overlaid normalised layer (and module) profiles; shift of every artifact vs the first one.

    Args:
        artifacts: label → artifact path, in the order chosen (the first is the "before").
    """
    if not artifacts:
        raise ViewError("Choose at least one importance artifact.")
    summaries = {label: open_artifact(path).summary for label, path in artifacts.items()}
    try:
        profiles = {label: layer_profile(summary) for label, summary in summaries.items()}
        per_module = {label: module_profiles(summary) for label, summary in summaries.items()}
    except ValueError as error:
        raise ViewError(f"an artifact has no usable layer profile: {error}") from error
    with _PYPLOT_LOCK:
        layers_figure = layer_profiles_figure(profiles, title="Normalised importance per decoder layer")
        modules_figure = module_profiles_figure(per_module, title="Per module type (each normalised over its layers)")
    stats = pd.DataFrame([_profile_stats(label, summary) for label, summary in summaries.items()])
    labels = list(summaries)
    first = labels[0]
    rows, skipped = [], []
    for label in labels[1:]:
        if len(summaries[label]["layers"]) != len(summaries[first]["layers"]):
            skipped.append(label)
            continue
        rows.append(_shift_row(first, summaries[first], label, summaries[label]))
    notes = []
    if len(labels) == 1:
        notes.append("Select two or more artifacts to see how the distribution shifts (the first one is the reference).")
    if skipped:
        notes.append(f"No shift metrics for {', '.join(skipped)}: a different number of layers than {first}.")
    return LayerView(layers_figure, modules_figure, stats, pd.DataFrame(rows), " ".join(notes))


# --- matrix explorer --------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixOptions:
    """What the explorer offers for one artifact, and the matrix it opens on."""

    modules: list[str]
    num_layers: int
    module: str
    layer: int


def matrix_options(path: Path) -> MatrixOptions:
    """2-D module types of an artifact; opens on the type with the most importance, at its peak layer."""
    artifact = open_artifact(path)
    two_d = sorted({located[1] for name, shape in artifact.shapes.items() if len(shape) == 2 and (located := layer_and_module(name))})
    if not two_d:
        raise ViewError(f"{path.name} holds no weight matrix of a decoder layer (only vectors or other parameters).")
    sums = artifact.summary.get("modules", {})
    module = max(two_d, key=lambda suffix: sum(sums.get(suffix, [0.0])))
    layer = int(np.argmax(sums[module])) if module in sums else 0
    return MatrixOptions(modules=two_d, num_layers=artifact.num_layers, module=module, layer=layer)


def _matrix_name(names, layer: int, module: str) -> str:
    for name in names:
        if layer_and_module(name) == (layer, module):
            return name
    raise ViewError(f"there is no {module} in layer {layer} here.")


def _clustering_table(stats: dict | None) -> pd.DataFrame:
    if stats is None:
        return pd.DataFrame([{"axis": "—", "note": "all-zero matrix: no importance to cluster"}])
    return pd.DataFrame(
        [
            {
                "axis": axis,
                "top entries": stats[f"top_{axis}s"],
                "mass in top 5 %": round(stats[f"{axis}_share"], 4),
                "uniform spread": round(stats[f"{axis}_uniform"], 4),
                "× uniform": round(stats[f"{axis}_ratio"], 2),
            }
            for axis in ("row", "col")
        ]
    ).replace({"axis": {"row": "rows (output features)", "col": "columns (input features)"}})


# Shares of the analysed entries the Space can show as region_freeze's frozen region.
REGION_FRACTIONS = {"none": None, "1 %": 0.01, "3 %": 0.03}


@lru_cache(maxsize=2)
def frozen_region(path: Path, modified: float, fraction: float) -> dict:
    """region_freeze's region for ``fraction`` (global top, as its default): name → flat indices.
    Cached per artifact version (``modified``): the global top k reads every tensor once."""
    return region_indices(path, fraction, "global", "entry")


def _region_mask(path: Path, name: str, shape: tuple[int, ...], fraction: float) -> torch.Tensor:
    indices = frozen_region(path, path.stat().st_mtime, fraction).get(name, torch.empty(0, dtype=torch.long))
    mask = torch.zeros(shape, dtype=torch.bool)
    mask.view(-1)[indices] = True
    return mask


def matrix_view(path: Path, label: str, layer: int, module: str,
                region: str | None = None) -> tuple[object, pd.DataFrame, str]:
    """Heatmap with row / column marginals of one importance matrix, and its rank clustering; with
    ``region`` (a key of `REGION_FRACTIONS`) the entries region_freeze would keep frozen drawn in red."""
    if region not in (None, *REGION_FRACTIONS):
        raise ViewError(f"unknown region {region!r}; choose one of {', '.join(REGION_FRACTIONS)}")
    artifact = open_artifact(path)
    name = _matrix_name(artifact.shapes, int(layer), module)
    matrix = artifact.tensor(name)
    stats = rank_clustering(matrix)
    fraction = REGION_FRACTIONS.get(region or "none")
    mask = _region_mask(path, name, tuple(matrix.shape), fraction) if fraction else None
    with _PYPLOT_LOCK:
        figure = heatmap_figure(matrix, title=f"{label}: {name.split('layers.', 1)[-1]}  {tuple(matrix.shape)}", region=mask)
    summary = "all-zero matrix" if stats is None else (
        f"Rank clustering of layer {layer} {module}: the top 5 % rows hold **{stats['row_share']:.1%}** of the "
        f"importance ({stats['row_ratio']:.1f}× uniform), the top 5 % columns **{stats['col_share']:.1%}** "
        f"({stats['col_ratio']:.1f}× uniform)."
    )
    if mask is not None:
        frozen = int(mask.sum())
        summary += (f" In red: the {frozen:,} entries ({frozen / mask.numel():.2%} of this matrix; rows touched "
                    f"{int(mask.any(1).sum())} of {mask.shape[0]}) that `region_freeze` at p = {region} (global top) keeps "
                    "at their pre-trained values.")
    return figure, _clustering_table(stats), summary


def change_view(dir_a: Path, dir_b: Path, layer: int, module: str) -> tuple[object, object, str]:
    """|Δθ| heatmap of one matrix between two checkpoints, and mean |Δθ| per layer."""
    try:
        matrices = change_matrices(dir_a, dir_b, int(layer))
        change = parameter_change(dir_a, dir_b)
    except (ValueError, OSError, KeyError) as error:
        raise ViewError(f"cannot compare these checkpoints: {error}") from error
    name = _matrix_name(matrices, int(layer), module)
    delta = matrices[name]
    with _PYPLOT_LOCK:
        heatmap = heatmap_figure(delta, title=f"|Δθ| {name.split('layers.', 1)[-1]}", value_label="|Δθ|")
        per_layer = layer_change_figure(change, title=f"Mean |Δθ| per layer ({dir_a.name} → {dir_b.name})")
    note = f"Max |Δθ| in this matrix: {float(delta.max()):.3g}; mean {float(delta.mean()):.3g}."
    return heatmap, per_layer, note


# --- deactivation (Table 1) -------------------------------------------------------------------


def _table_row(label: str, result: dict) -> dict:
    ppl = result["ppl"]
    base = float(ppl["base"])

    def ratio(kind: str):
        return round(float(ppl[kind]) / base, 3) if kind in ppl and base > 0 else None

    return {
        "result": label,
        "importance input": result.get("importance_input", "—"),
        "PPL input": result.get("input", "—"),
        "zeroed": f"{float(result['fraction']):.1%} ({result.get('selection', 'global')})",
        "PPL base": round(base, 3),
        "PPL top": round(float(ppl["top"]), 3) if "top" in ppl else None,
        "PPL bottom": round(float(ppl["bottom"]), 3) if "bottom" in ppl else None,
        "PPL random": round(float(ppl["random"]), 3) if "random" in ppl else None,
        "top / base": ratio("top"),
        "bottom / base": ratio("bottom"),
        "random / base": ratio("random"),
        "records": result.get("num_samples", "—"),
    }


def deactivation_view(results: dict[str, Path]) -> tuple[pd.DataFrame, object | None, str]:
    """Table 1 (one row per result file) and its bar chart; unreadable files are named in the note."""
    rows, bars, bad = [], {}, []
    for label, path in results.items():
        try:
            result = json.loads(path.read_text())
            rows.append(_table_row(label, result))
            bars[label] = {kind: float(value) for kind, value in result["ppl"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            bad.append(label)
    note = f"Skipped unreadable results: {', '.join(bad)}." if bad else ""
    if not rows:
        return pd.DataFrame(), None, note
    return pd.DataFrame(rows), deactivation_figure(bars), note


# --- Layer-LR ---------------------------------------------------------------------------------


def layer_lr_view(path: Path, alpha: float, schemes: Sequence[str]) -> tuple[object, pd.DataFrame, str]:
    """c_l per decoder layer for each chosen scheme (the trainer's own `layer_coefficients`)."""
    from trainers.layer_lr import LayerLRError, layer_coefficients

    if not schemes:
        raise ViewError("Choose at least one scheme.")
    layers = open_artifact(path).summary["layers"]
    curves, notes = {}, []
    for scheme in schemes:
        try:
            curves[scheme] = layer_coefficients(layers, float(alpha), scheme)
        except LayerLRError as error:
            notes.append(f"{scheme}: {error}")
    profile = layer_profile({"layers": layers})
    table = pd.DataFrame({"layer": range(len(layers)), "I_l / Σ I": np.round(profile, 4)})
    for scheme, coefficients in curves.items():
        table[f"c_l {scheme}"] = np.round(coefficients, 4)
    return layer_lr_figure(profile, curves, float(alpha)), table, " ".join(notes)
