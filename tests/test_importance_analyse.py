"""Analysis: profiles, shift metrics, rank clustering, pooling, and the compare command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from importance.analyse import (
    js_divergence,
    max_pool,
    normalised,
    parameter_change,
    rank_clustering,
    rank_clustering_summary,
    shift_metrics,
    third_shares,
)
from importance.artifact import build_summary, save_artifact
from importance.cli import main as importance_main
from speech_llama.generate import load_model
from speech_llama.presets import build_tiny_random


def test_profiles_and_shift_metrics():
    assert normalised([1, 1, 2]).tolist() == [0.25, 0.25, 0.5]
    with pytest.raises(ValueError, match="zero total"):
        normalised([0, 0])
    assert js_divergence([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint supports: 1 bit
    p, q = [5, 3, 1, 1, 1, 1], [1, 1, 1, 1, 3, 5]
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    assert 0 < js_divergence(p, q) < 1
    shift = shift_metrics(p, q)
    assert shift["peak_layer"] == {"before": 0, "after": 5}
    assert shift["spearman"] == pytest.approx(-0.48)  # ranks with ties averaged: −6 / 12.5
    assert shift["last_share"]["before"] == pytest.approx(2 / 12) and shift["last_share"]["after"] == pytest.approx(8 / 12)
    thirds = third_shares(np.ones(30))
    assert thirds == pytest.approx({"first": 1 / 3, "middle": 1 / 3, "last": 1 / 3})


def test_rank_clustering_detects_concentrated_rows_and_columns():
    uniform = torch.ones(100, 40)
    stats = rank_clustering(uniform)
    assert stats["row_share"] == pytest.approx(0.05) and stats["row_uniform"] == pytest.approx(0.05)
    assert stats["col_share"] == pytest.approx(2 / 40) and stats["col_ratio"] == pytest.approx(1.0)
    clustered = torch.full((100, 40), 1e-3)
    clustered[7] = 10.0  # one dominant output row: rows concentrate, columns stay even
    stats = rank_clustering(clustered)
    assert stats["row_share"] > 0.95 and stats["row_ratio"] > 15
    assert stats["col_ratio"] == pytest.approx(1.0)
    columns = rank_clustering(clustered.T.contiguous())
    assert columns["col_share"] == pytest.approx(stats["row_share"])
    assert rank_clustering(torch.zeros(4, 4)) is None
    summary = rank_clustering_summary({
        "language_model.model.layers.0.mlp.up_proj.weight": rank_clustering(uniform),
        "language_model.model.layers.1.mlp.up_proj.weight": rank_clustering(clustered),
    })
    assert summary["mlp.up_proj.weight"]["matrices"] == 2
    assert 0.05 < summary["mlp.up_proj.weight"]["row_share_mean"] < 1


def test_max_pool_bounds_size_and_keeps_peaks():
    matrix = torch.rand(1000, 300)
    matrix[123, 45] = 50.0
    pooled = max_pool(matrix, 256)
    assert pooled.shape == (256, 256)
    assert float(pooled.max()) == 50.0
    assert float(pooled.min()) >= float(matrix.min())
    small = torch.rand(10, 20)
    assert torch.equal(max_pool(small, 256), small)


def fake_artifact(path, model, weight_by_layer):
    """An artifact over the decoder layers whose importance grows with `weight_by_layer[l]`."""
    importances = {}
    for name, param in model.named_parameters():
        if name.startswith("language_model.model.layers."):
            layer = int(name.split(".layers.")[1].split(".")[0])
            importances[name] = torch.rand(param.shape) * weight_by_layer[layer]
    summary = build_summary(importances, num_layers=len(weight_by_layer), model="tiny", input="text",
                            num_samples=1, num_tokens=1, reduction="mean")
    return save_artifact(path, importances, summary)


def test_compare_writes_json_and_figures(tiny_model_dir, tmp_path):
    model, _ = load_model(tiny_model_dir)
    before = fake_artifact(tmp_path / "before.safetensors", model, [4, 3, 2, 1])
    after = fake_artifact(tmp_path / "after.safetensors", model, [1, 2, 3, 4])
    other_checkpoint = build_tiny_random(tmp_path / "tiny-seed1", seed=1)
    out = tmp_path / "cmp"
    code = importance_main([
        "compare", str(before), str(after), "--out", str(out), "--labels", "text", "speech",
        "--checkpoint-a", str(tiny_model_dir), "--checkpoint-b", str(other_checkpoint), "--max-size", "32", "--heatmap-modules", "down_proj",
    ])
    assert code == 0
    report = json.loads((out / "compare.json").read_text())
    shift = report["shift"]["text -> speech"]
    assert shift["peak_layer"] == {"before": 0, "after": 3}
    assert shift["spearman"] == pytest.approx(-1.0)
    assert sum(report["layer_profiles"]["text"]) == pytest.approx(1.0)
    assert "mlp.down_proj.weight" in report["module_profiles"]["speech"]
    clustering = report["rank_clustering"]["text"]["summary"]["self_attn.q_proj.weight"]
    assert clustering["matrices"] == 4 and 0 < clustering["row_share_mean"] < 1
    assert len(report["change"]["layers"]) == 4 and all(v > 0 for v in report["change"]["layers"])
    for figure in report["figures"]:
        assert (out / figure).stat().st_size > 1000
    assert {"layer_profiles.png", "module_profiles.png", "change_per_layer.png"} <= set(report["figures"])
    assert any(name.startswith("heatmap_text_") for name in report["figures"])


def test_parameter_change_refuses_mismatched_checkpoints(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no parameter matches"):
        parameter_change(tiny_model_dir, tiny_model_dir, r"no_such_parameter")
    change = parameter_change(tiny_model_dir, tiny_model_dir)
    assert change["layers"] == [0.0] * 4
