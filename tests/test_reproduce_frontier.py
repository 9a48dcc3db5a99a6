"""The trade-off frontier figure and the Space's tab that shows it (spaces_demo/frontier.py)."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from spaces_demo import frontier as frontier_module
from spaces_demo.frontier import find_reproductions, frontier_figure, frontier_tab, frontier_view

FRONTIER = {
    "curves": {"full": [{"step": 0, "fraction": 0.0, "t2t_kept": 0.0, "s2t_gained": 0.0},
                        {"step": 12, "fraction": 0.25, "t2t_kept": -0.02, "s2t_gained": 0.06},
                        {"step": 48, "fraction": 1.0, "t2t_kept": -0.05, "s2t_gained": 0.14}],
               "lora": [{"step": 0, "fraction": 0.0, "t2t_kept": 0.0, "s2t_gained": 0.0},
                        {"step": 48, "fraction": 1.0, "t2t_kept": -0.01, "s2t_gained": 0.12}]},
    "finals": {name: {"t2t_kept": kept, "t2t_low": kept - 0.03, "t2t_high": kept + 0.03, "s2t_gained": 0.13,
                      "s2t_low": 0.09, "s2t_high": 0.17, "seeds": 3, "n": 404}
               for name, kept in (("full", -0.05), ("lora", -0.01), ("full-other-text", -0.06))},
    "curve_questions": 202,
    "labels": {"full": "Full-FT", "lora": "LoRA", "full-other-text": "Full-FT (other targets, typed questions)"},
}


def test_the_figure_draws_each_curve_and_each_final_with_its_intervals():
    axes = frontier_figure(FRONTIER).axes[0]
    curves = [line for line in axes.get_lines() if len(line.get_xdata()) > 1 and line.get_marker() == "o"]
    assert sorted(len(line.get_xdata()) for line in curves) == [2, 3]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["Full-FT, 3 seeds", "LoRA, 3 seeds", "Full-FT (other targets, typed questions), 3 seeds"]
    assert [text.get_text() for text in axes.texts if text.get_text() in ("0.25", "1")] == ["0.25", "1", "1"]


def test_every_series_gets_its_own_colour():
    series = ["full", "layer_lr", "lora", "distill", "full-self-speech", "full-other-text", "full-self-text",
              "region_freeze@0.01", "importance_anchor@0.3", "uniform_anchor@0.3"]
    from matplotlib.colors import to_hex

    colours = frontier_module.series_colours(series)
    assert len({to_hex(colour) for colour in colours.values()}) == len(series)
    assert colours["full"] == frontier_module.COLOURS["full"]


def test_reproductions_are_found_in_the_folder_and_one_level_down(tmp_path, monkeypatch):
    monkeypatch.setattr(frontier_module, "SHIPPED_RESULTS", tmp_path / "none.json")
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "results.json").write_text(json.dumps({"frontier": FRONTIER, "hypotheses": {
        "c": {"claim": "Layer-LR and LoRA keep more T2T accuracy than Full-FT", "status": "not resolved"}}}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps({"table2": {}}))  # an older run: no frontier
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    found = find_reproductions(tmp_path)
    assert list(found) == ["paper"]
    figure, table, note = frontier_view(found["paper"])
    assert list(table["series"]) == ["Full-FT", "LoRA", "Full-FT (other targets, typed questions)"]
    assert table["T2T kept"][0] == "-0.050 [-0.080, -0.020]"
    assert note == "(c) Layer-LR and LoRA keep more T2T accuracy than Full-FT: **not resolved**"
    with pytest.raises(ValueError, match="holds no trade-off frontier"):
        frontier_view(tmp_path / "other" / "results.json")


def test_the_space_tab_builds_inside_the_blocks(tmp_path):
    with gr.Blocks() as demo:
        with gr.Tab("Paper: cost and cure"):
            frontier_tab(tmp_path, demo)
    assert any(getattr(block, "elem_id", None) == "frontier-plot" for block in demo.blocks.values())
