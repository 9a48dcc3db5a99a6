"""The two figures `importance.plots` has no counterpart for: Table 1 as bars, Layer-LR curves.

Built with `matplotlib.figure.Figure` directly (not pyplot), so they need no closing and are safe
to make from Gradio's worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CONDITIONS = ("base", "bottom", "random", "top")
CONDITION_COLOURS = {"base": "#7f7f7f", "bottom": "#2ca02c", "random": "#1f77b4", "top": "#d62728"}


def deactivation_figure(results: Mapping[str, Mapping[str, float]]) -> Figure:
    """Grouped bars, log scale: PPL of the intact model and with the bottom / random / top share zeroed.

    Args:
        results: label → {condition: perplexity} (missing conditions are left out).
    """
    figure = Figure(figsize=(7.5, 3.8), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    labels = list(results)
    width = 0.8 / len(CONDITIONS)
    positions = np.arange(len(labels))
    for offset, condition in enumerate(CONDITIONS):
        values = [results[label].get(condition, np.nan) for label in labels]
        bars = axes.bar(positions + (offset - 1.5) * width, values, width, label=condition, color=CONDITION_COLOURS[condition])
        axes.bar_label(bars, labels=[f"{v:.3g}" if np.isfinite(v) else "" for v in values], fontsize=7, rotation=90, padding=2)
    axes.set_yscale("log")
    axes.set_xticks(positions, labels, fontsize=8)
    axes.set_ylabel("perplexity (log scale)")
    axes.set_title("Perplexity with a share of the analysed parameters zeroed (Table 1)")
    axes.legend(fontsize=8, ncol=4)
    axes.grid(axis="y", alpha=0.3)
    axes.margins(y=0.25)
    return figure


def layer_lr_figure(importance_profile: Sequence[float], curves: Mapping[str, Sequence[float]], alpha: float) -> Figure:
    """Learning-rate multiplier c_l per decoder layer for each scheme, over the layer profile."""
    figure = Figure(figsize=(7.5, 3.8), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    layers = np.arange(len(importance_profile))
    profile_axes = axes.twinx()
    profile_axes.bar(layers, importance_profile, color="#cccccc", alpha=0.6, label="I_l / Σ I")
    profile_axes.set_ylabel("importance share I_l / Σ I", color="#777777")
    axes.set_zorder(profile_axes.get_zorder() + 1)
    axes.patch.set_visible(False)
    for scheme, coefficients in curves.items():
        axes.plot(layers, coefficients, marker="o", markersize=3, label=scheme)
    axes.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
    axes.set_xlabel("decoder layer")
    axes.set_ylabel("c_l (lr = c_l · base lr)")
    axes.set_title(f"Layer-LR coefficients (Eq. 3), α = {alpha:g}")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8)
    return figure
