"""Figures of the analysis (matplotlib, Agg): every function returns a `Figure`; `save_figure`
writes one. A Gradio Space can show the figures directly (``gr.Plot(fig)``).

- `layer_profiles_figure`: I_l / Σ I per artifact (the paper's Fig. 2);
- `module_profiles_figure`: one panel per module type (Fig. 3);
- `heatmap_figure`: a max-pooled importance (or |Δθ|) matrix with row / column marginals (Fig. 1);
- `layer_change_figure`, `change_heatmaps_figure`: parameter change between checkpoints (Fig. 4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the CLI and the Space never open a window

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .analyse import marginals, max_pool  # noqa: E402


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG and release its memory."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return path


def _new_figure(width: float, height: float) -> Figure:
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height))


def layer_profiles_figure(profiles: Mapping[str, np.ndarray], title: str = "Importance per layer") -> Figure:
    """One line per artifact: share of the total importance in each decoder layer."""
    figure = _new_figure(7, 3.8)
    axes = figure.add_subplot(1, 1, 1)
    for label, profile in profiles.items():
        axes.plot(np.arange(len(profile)), profile, marker="o", markersize=3, label=label)
    axes.set_xlabel("decoder layer")
    axes.set_ylabel("I_l / Σ I")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def module_profiles_figure(profiles: Mapping[str, Mapping[str, np.ndarray]], title: str = "Importance per layer and module") -> Figure:
    """One panel per module type; a line per artifact (each module normalised over its layers).

    Args:
        profiles: label → {module suffix → (L,) profile}.
    """
    modules = sorted({module for per_label in profiles.values() for module in per_label})
    columns = min(4, max(1, len(modules)))
    rows = math.ceil(len(modules) / columns) if modules else 1
    figure = _new_figure(3.6 * columns, 2.6 * rows)
    for position, module in enumerate(modules, start=1):
        axes = figure.add_subplot(rows, columns, position)
        for label, per_label in profiles.items():
            if module in per_label:
                axes.plot(per_label[module], marker="o", markersize=2, label=label)
        axes.set_title(module, fontsize=9)
        axes.set_xlabel("layer", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if position == 1:
            axes.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def heatmap_figure(matrix: torch.Tensor, title: str, max_size: int = 256, value_label: str = "importance",
                   region: torch.Tensor | None = None) -> Figure:
    """A weight-matrix heatmap (max-pooled to ≤ max_size², log colour scale) with the row sums
    on the right and the column sums on top, both from the full-resolution matrix.

    ``region``: a boolean mask of the matrix's shape drawn in red over it (a pooled cell is red when
    any of its entries is in the region), e.g. the entries region_freeze keeps frozen."""
    pooled = max_pool(matrix, max_size).numpy()
    row_mass, col_mass = marginals(matrix)
    rows, cols = matrix.shape
    figure = _new_figure(6.4, 5.6)
    grid = figure.add_gridspec(2, 3, width_ratios=(5, 1, 0.2), height_ratios=(1, 5), wspace=0.05, hspace=0.05)
    main = figure.add_subplot(grid[1, 0])
    positive = pooled[pooled > 0]
    norm = LogNorm(vmin=max(float(np.percentile(positive, 1)), 1e-30), vmax=float(positive.max())) if positive.size else None
    image = main.imshow(
        np.where(pooled > 0, pooled, np.nan), aspect="auto", interpolation="nearest", norm=norm,
        cmap="viridis", extent=(0, cols, rows, 0),
    )
    if region is not None:
        marked = max_pool(region.float(), max_size).numpy() > 0
        main.imshow(np.where(marked, 1.0, np.nan), aspect="auto", interpolation="nearest", cmap=ListedColormap(["red"]),
                    alpha=0.85, extent=(0, cols, rows, 0))
    main.set_xlabel(f"input feature (column), {cols}")
    main.set_ylabel(f"output feature (row), {rows}")
    top = figure.add_subplot(grid[0, 0], sharex=main)
    top.plot(np.arange(cols) + 0.5, col_mass, linewidth=0.6)
    top.set_ylabel("Σ col", fontsize=8)
    top.tick_params(labelbottom=False, labelsize=7)
    right = figure.add_subplot(grid[1, 1], sharey=main)
    right.plot(row_mass, np.arange(rows) + 0.5, linewidth=0.6)
    right.set_xlabel("Σ row", fontsize=8)
    right.tick_params(labelleft=False, labelsize=7)
    colour = figure.add_subplot(grid[1, 2])
    figure.colorbar(image, cax=colour, label=value_label)
    top.set_title(title, fontsize=9)
    return figure


def layer_change_figure(change: Mapping[str, object], title: str = "Parameter change per layer") -> Figure:
    """Mean |Δθ| per layer (all analysed parameters) and per module type."""
    figure = _new_figure(7, 3.8)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(change["layers"], color="black", linewidth=2, marker="o", markersize=3, label="all")
    for module, values in change["modules"].items():
        axes.plot(values, linewidth=0.8, label=module)
    axes.set_xlabel("decoder layer")
    axes.set_ylabel("mean |Δθ|")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    return figure


def change_heatmaps_figure(matrices: Mapping[str, torch.Tensor], title: str, max_size: int = 256) -> Figure:
    """|Δθ| heatmaps (max-pooled, log scale) of several matrices side by side."""
    names = list(matrices)
    columns = min(4, max(1, len(names)))
    rows = math.ceil(len(names) / columns) if names else 1
    figure = _new_figure(3.4 * columns, 3.0 * rows)
    for position, name in enumerate(names, start=1):
        axes = figure.add_subplot(rows, columns, position)
        pooled = max_pool(matrices[name], max_size).numpy()
        positive = pooled[pooled > 0]
        norm = LogNorm(vmin=max(float(np.percentile(positive, 1)), 1e-30), vmax=float(positive.max())) if positive.size else None
        image = axes.imshow(np.where(pooled > 0, pooled, np.nan), aspect="auto", interpolation="nearest", norm=norm, cmap="magma")
        axes.set_title(name.split("layers.", 1)[-1], fontsize=8)
        axes.tick_params(labelsize=6)
        figure.colorbar(image, ax=axes, fraction=0.046)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
