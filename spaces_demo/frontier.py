"""The seed paper's result in one picture: S2T gained against T2T kept, every method and checkpoint
of a reproduction (`speech-llama reproduce`, its `results.json` → `frontier`).

Lines follow each method along training (start → intermediate checkpoints → end, its curve seeds on
the curve questions); large markers are the final models pooled over all seeds and test questions,
with both paired 95 % intervals. Up is hearing better, left of 0 is text ability lost: the paper's
cure is a point higher and further right than Full-FT's.

Used by the reproduction (`DIR/figures/frontier.png`) and by the Space's "Paper: cost and cure" tab,
which lists the reproductions in its artifact folder (`results.json` holding a frontier, in the
folder or one level down) and the one shipped in the repository (`docs/paper/results.json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

SHIPPED_RESULTS = Path(__file__).resolve().parents[1] / "docs" / "paper" / "results.json"
RESULTS_NAME = "results.json"
COLOURS = {"full": "#d62728", "layer_lr": "#1f77b4", "lora": "#2ca02c", "distill": "#9467bd",
           "full-self-speech": "#ff7f0e", "full-other-text": "#8c564b", "full-self-text": "#7f7f7f"}


# For series without a colour of their own (e.g. the importance-per-parameter methods), in order of appearance.
SPARE_COLOURS = ("#e377c2", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#843c39", "#7b4173")


def series_colours(series: list[str]) -> dict[str, str]:
    """A distinct colour per series: `COLOURS` where it names one, else the next spare colour."""
    spare = iter(SPARE_COLOURS * (1 + len(series) // len(SPARE_COLOURS)))
    return {name: COLOURS.get(name) or next(spare) for name in series}


def frontier_figure(frontier: Mapping, labels: Mapping[str, str] | None = None) -> Figure:
    """S2T gained (y) against T2T kept (x) for every series of `frontier` (results.json's `frontier`)."""
    labels = labels or frontier.get("labels") or {}
    figure = Figure(figsize=(7.5, 5.2), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    axes.axhline(0, color="black", linewidth=0.6)
    axes.axvline(0, color="black", linewidth=0.6)
    series = list(dict.fromkeys([*frontier.get("curves", {}), *frontier.get("finals", {})]))
    colours = series_colours(series)
    for name in series:
        colour, label = colours[name], labels.get(name, name)
        points = frontier.get("curves", {}).get(name)
        if points:
            axes.plot([p["t2t_kept"] for p in points], [p["s2t_gained"] for p in points], color=colour, alpha=0.55,
                      linewidth=1.2, marker="o", markersize=3)
            for point in points[1:]:
                axes.annotate(f"{point['fraction']:g}", (point["t2t_kept"], point["s2t_gained"]), fontsize=6,
                              color=colour, xytext=(3, 3), textcoords="offset points")
        final = frontier.get("finals", {}).get(name)
        if final:
            axes.errorbar(final["t2t_kept"], final["s2t_gained"],
                          xerr=[[final["t2t_kept"] - final["t2t_low"]], [final["t2t_high"] - final["t2t_kept"]]],
                          yerr=[[final["s2t_gained"] - final["s2t_low"]], [final["s2t_high"] - final["s2t_gained"]]],
                          color=colour, marker="D", markersize=7, capsize=3, linewidth=1,
                          label=f"{label}, {final['seeds']} seed{'s' if final['seeds'] != 1 else ''}")
    questions = frontier.get("curve_questions")
    axes.set_xlabel("T2T kept: accuracy − No-FT's (0 = all kept)")
    axes.set_ylabel("S2T gained: accuracy − the start model's")
    axes.set_title("Stage-1 speech training: what it costs and what it buys", fontsize=10)
    axes.text(0.01, 0.01, "lines: along training (fractions of the steps)"
              + (f", first {questions} questions" if questions else "") + "; ◆: final, pooled over seeds, 95 % intervals",
              transform=axes.transAxes, fontsize=6.5, color="#555555")
    axes.grid(alpha=0.3)
    if series:
        axes.legend(fontsize=7, loc="upper left")
    return figure


def find_reproductions(root: Path) -> dict[str, Path]:
    """label → results.json with a frontier: in `root`, one level below it, and the shipped one."""
    root = Path(root)
    candidates = [root / RESULTS_NAME, *sorted(root.glob(f"*/{RESULTS_NAME}"))] if root.is_dir() else []
    found = {}
    for path in candidates:
        if _frontier_of(path) is not None:
            found[path.parent.relative_to(root).as_posix() if path.parent != root else "."] = path
    if _frontier_of(SHIPPED_RESULTS) is not None:
        found["docs/paper (shipped)"] = SHIPPED_RESULTS
    return found


def _frontier_of(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    frontier = data.get("frontier") if isinstance(data, dict) else None
    return frontier if isinstance(frontier, dict) and ("finals" in frontier or "curves" in frontier) else None


def frontier_table(frontier: Mapping, labels: Mapping[str, str]) -> pd.DataFrame:
    """One row per final model: both axes with their intervals."""
    rows = [{"series": labels.get(name, name), "seeds": final["seeds"],
             "T2T kept": f"{final['t2t_kept']:+.3f} [{final['t2t_low']:+.3f}, {final['t2t_high']:+.3f}]",
             "S2T gained": f"{final['s2t_gained']:+.3f} [{final['s2t_low']:+.3f}, {final['s2t_high']:+.3f}]"}
            for name, final in frontier.get("finals", {}).items()]
    return pd.DataFrame(rows)


def frontier_view(path: Path) -> tuple[Figure, pd.DataFrame, str]:
    """(figure, table, note) of one reproduction's results.json."""
    frontier = _frontier_of(path)
    if frontier is None:
        raise ValueError(f"{path} holds no trade-off frontier (a results.json written by `speech-llama reproduce`)")
    labels = frontier.get("labels") or {}
    verdicts = json.loads(path.read_text()).get("hypotheses", {})
    note = " · ".join(f"({key}) {claim['claim']}: **{claim['status']}**" for key, claim in verdicts.items())
    return frontier_figure(frontier, labels), frontier_table(frontier, labels), note


def frontier_tab(root: Path, demo) -> None:
    """The Space's tab (built inside `demo`'s Blocks context): choose a reproduction, see its frontier."""
    import gradio as gr

    gr.Markdown("The seed paper's question: Stage-1 speech training costs text ability (T2T); do Layer-LR and LoRA "
                "keep more of it while hearing better? One point per method and checkpoint of a `speech-llama "
                "reproduce` run (`make paper`), its verdicts below.")
    with gr.Row():
        choice = gr.Dropdown(label="Reproduction (results.json)", elem_id="fr-results")
        refresh = gr.Button("Refresh", size="sm")
    note = gr.Markdown(elem_id="fr-note")
    plot = gr.Plot(label="S2T gained vs T2T kept", elem_id="frontier-plot")
    table = gr.Dataframe(label="Final models", interactive=False, visible=False)

    def show(label: str | None):
        found = find_reproductions(root)
        if not found:
            return {note: f"No reproduction in {root} yet: run `speech-llama reproduce --out {root / 'paper'}` "
                          "(or copy a run's results.json there) and press Refresh.", plot: None,
                    table: gr.update(visible=False)}
        path = found.get(label) or next(iter(found.values()))
        figure, rows, text = frontier_view(path)
        return {note: text, plot: figure, table: gr.update(value=rows, visible=not rows.empty)}

    def listing():
        found = list(find_reproductions(root))
        return gr.update(choices=found, value=found[0] if found else None)

    refresh.click(listing, None, choice).then(show, choice, [note, plot, table])
    choice.change(show, choice, [note, plot, table])
    demo.load(listing, None, choice).then(show, choice, [note, plot, table])


__all__ = ["SHIPPED_RESULTS", "find_reproductions", "frontier_figure", "frontier_tab", "frontier_table", "frontier_view",
           "series_colours"]
