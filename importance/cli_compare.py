"""`speech-llama compare`: profiles, shift metrics, rank clustering and heatmaps of artifacts.

Writes ``DIR/compare.json`` and PNGs: ``layer_profiles.png`` (Fig. 2), ``module_profiles.png``
(Fig. 3), ``heatmap_<label>_<module>.png`` (Fig. 1: per module type, the layer where it peaks),
and with two checkpoints ``change_per_layer.png`` + ``change_heatmaps_layer<l>.png`` (Fig. 4).
Shift metrics compare the first artifact (before) with each other one (after).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from speech_llama.files import atomic_write_json

from .analyse import (
    TOP_SHARE,
    change_matrices,
    heatmap_targets,
    js_divergence,
    layer_profile,
    module_profiles,
    module_shares,
    parameter_change,
    rank_clustering_all,
    rank_clustering_summary,
    shift_metrics,
)
from .artifact import DEFAULT_PARAMS, ImportanceArtifact, load_artifact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifacts", nargs="+", type=Path, help="X.safetensors artifacts; the first is the reference (before)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (compare.json + PNGs)")
    parser.add_argument("--labels", nargs="+", help="one label per artifact (default: file stems)")
    parser.add_argument("--checkpoint-a", type=Path, help="model folder before fine-tuning (for |Δθ|)")
    parser.add_argument("--checkpoint-b", type=Path, help="model folder after fine-tuning (for |Δθ|)")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="regex of the parameters compared between checkpoints")
    parser.add_argument("--top-share", type=float, default=TOP_SHARE, help="share of rows/columns counted as top (rank clustering)")
    parser.add_argument("--max-size", type=int, default=256, help="heatmaps are max-pooled to at most this many rows/columns")
    parser.add_argument("--heatmap-modules", default=".", help="regex over module suffixes (e.g. 'mlp|q_proj') that get a heatmap")
    parser.add_argument("--no-heatmaps", action="store_true", help="skip the per-module importance heatmaps")


def _labels(args: argparse.Namespace) -> list[str]:
    labels = args.labels or [path.stem for path in args.artifacts]
    if len(labels) != len(args.artifacts):
        raise ValueError(f"{len(args.artifacts)} artifacts but {len(labels)} labels")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}")
    return labels


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _check_same_depth(artifacts: dict[str, ImportanceArtifact]) -> None:
    depths = {label: artifact.num_layers for label, artifact in artifacts.items()}
    if len(set(depths.values())) > 1:
        raise ValueError(f"artifacts have different numbers of layers: {depths}")


def profile_section(artifacts: dict[str, ImportanceArtifact]) -> dict[str, Any]:
    """Normalised layer / module profiles of every artifact and shifts from the first one."""
    labels = list(artifacts)
    reference = artifacts[labels[0]].summary
    section: dict[str, Any] = {"layer_profiles": {}, "module_profiles": {}, "module_shares": {}, "shift": {}}
    for label, artifact in artifacts.items():
        summary = artifact.summary
        section["layer_profiles"][label] = layer_profile(summary).tolist()
        section["module_profiles"][label] = {m: p.tolist() for m, p in module_profiles(summary).items()}
        section["module_shares"][label] = module_shares(summary)
    for label in labels[1:]:
        summary = artifacts[label].summary
        shift = shift_metrics(reference["layers"], summary["layers"])
        shift["module_js_divergence"] = {
            module: js_divergence(sums, summary["modules"][module])
            for module, sums in reference["modules"].items()
            if module in summary["modules"] and sum(sums) > 0 and sum(summary["modules"][module]) > 0
        }
        section["shift"][f"{labels[0]} -> {label}"] = shift
    return section


def _figures_for_profiles(section: dict[str, Any], out: Path) -> list[Path]:
    import numpy as np

    from .plots import layer_profiles_figure, module_profiles_figure, save_figure

    layer = {label: np.asarray(p) for label, p in section["layer_profiles"].items()}
    modules = {label: {m: np.asarray(p) for m, p in per.items()} for label, per in section["module_profiles"].items()}
    return [
        save_figure(layer_profiles_figure(layer), out / "layer_profiles.png"),
        save_figure(module_profiles_figure(modules), out / "module_profiles.png"),
    ]


def _heatmaps(label: str, artifact: ImportanceArtifact, out: Path, max_size: int, modules: str) -> list[Path]:
    from .plots import heatmap_figure, save_figure

    written = []
    for module, name in heatmap_targets(artifact).items():
        if not re.search(modules, module):
            continue
        figure = heatmap_figure(artifact.tensor(name), f"{label}: {name}", max_size=max_size)
        written.append(save_figure(figure, out / f"heatmap_{_slug(label)}_{_slug(module)}.png"))
    return written


def _change_section(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], list[Path]]:
    from .plots import change_heatmaps_figure, layer_change_figure, save_figure

    change = parameter_change(args.checkpoint_a, args.checkpoint_b, args.params)
    peak = max(range(len(change["layers"])), key=change["layers"].__getitem__)
    matrices = change_matrices(args.checkpoint_a, args.checkpoint_b, peak, args.params)
    change["peak_layer"] = peak
    change["checkpoint_a"], change["checkpoint_b"] = str(args.checkpoint_a), str(args.checkpoint_b)
    figures = [save_figure(layer_change_figure(change), out / "change_per_layer.png")]
    if matrices:
        title = f"|Δθ| in layer {peak} (largest mean change)"
        figures.append(save_figure(change_heatmaps_figure(matrices, title, args.max_size), out / f"change_heatmaps_layer{peak}.png"))
    return change, figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    if (args.checkpoint_a is None) != (args.checkpoint_b is None):
        raise ValueError("pass both --checkpoint-a and --checkpoint-b, or neither")
    if not 0 < args.top_share <= 1:
        raise ValueError(f"--top-share must be in (0, 1], got {args.top_share}")
    labels = _labels(args)
    artifacts = {label: load_artifact(path) for label, path in zip(labels, args.artifacts)}
    _check_same_depth(artifacts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {"artifacts": {label: str(path) for label, path in zip(labels, args.artifacts)}}
    report.update(profile_section(artifacts))
    figures = _figures_for_profiles(report, out)
    report["rank_clustering"] = {}
    for label, artifact in artifacts.items():
        per_matrix = rank_clustering_all(artifact.tensors(), args.top_share)
        report["rank_clustering"][label] = {
            "top_share": args.top_share,
            "summary": rank_clustering_summary(per_matrix),
            "matrices": per_matrix,
        }
        if not args.no_heatmaps:
            figures += _heatmaps(label, artifact, out, args.max_size, args.heatmap_modules)
    if args.checkpoint_a is not None:
        report["change"], change_figures = _change_section(args, out)
        figures += change_figures
    report["figures"] = [path.name for path in figures]
    atomic_write_json(out / "compare.json", report)
    for key, shift in report["shift"].items():
        print(
            f"compare: {key}: JS {shift['js_divergence']:.4f} bits, Spearman {shift['spearman']}, "
            f"peak {shift['peak_layer']['before']}→{shift['peak_layer']['after']}"
        )
    print(f"compare: wrote {out / 'compare.json'} and {len(figures)} figures")
    return report
