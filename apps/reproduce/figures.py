"""The reproduction's own figures: Table 2's accuracies with their 95 % intervals, and the trade-off
frontier (S2T gained vs T2T kept, drawn by the Space's `spaces_demo.frontier`, which shows it too).
The importance figures, Fig. 1–4 analogues, come from `speech-llama compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from importance.plots import save_figure
from spaces_demo.frontier import frontier_figure

from .experiments import series_label

TASKS = ("t2t", "s2t")


def accuracy_figure(table2: dict[str, dict[str, float]], intervals: dict[str, dict[str, dict]],
                    cascade: float | None = None) -> Figure:
    """Grouped bars: T2T and S2T accuracy per model (pooled over seeds), error bars = the 95 % interval;
    the ASR cascade's S2T as a dashed line."""
    names = list(table2)
    figure = Figure(figsize=(1.3 * len(names) + 2, 3.8))
    axes = figure.subplots()
    positions = np.arange(len(names))
    for offset, task in zip((-0.2, 0.2), TASKS):
        values = np.array([table2[name][task] for name in names])
        low = np.array([intervals.get(name, {}).get(task, {}).get("low", value) for name, value in zip(names, values)])
        high = np.array([intervals.get(name, {}).get(task, {}).get("high", value) for name, value in zip(names, values)])
        axes.bar(positions + offset, values, width=0.38, label=task.upper(),
                 yerr=np.stack([values - low, high - values]), capsize=3)
    if cascade is not None:
        axes.axhline(cascade, linestyle="--", color="grey", label="cascade (ASR → LLM)")
    axes.set_xticks(positions, [model_label(name) for name in names], rotation=25, ha="right", fontsize=7)
    axes.set_ylabel("accuracy (95 % interval)")
    axes.set_ylim(0, 1)
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    return figure


def model_label(name: str) -> str:
    return {"no_ft": "No-FT", "start": "start (aligned)"}.get(name) or series_label(name)


def save_accuracy_figure(results: dict[str, Any], out_dir: Path) -> Path:
    """figures/accuracy.png from results' table2, intervals and cascade."""
    figure = accuracy_figure(results["table2"], results["intervals"], results.get("cascade"))
    return save_figure(figure, Path(out_dir) / "accuracy.png")


def save_frontier_figure(results: dict[str, Any], out_dir: Path) -> Path:
    """figures/frontier.png: every method and checkpoint, S2T gained vs T2T kept."""
    return save_figure(frontier_figure(results["frontier"]), Path(out_dir) / "frontier.png")
