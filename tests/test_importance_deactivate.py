"""Deactivation: exact top/bottom/random counts (ties included), bit-exact restore, the CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from importance.artifact import build_summary, save_artifact
from importance.cli import main as importance_main
from importance.deactivate import (
    build_selection,
    fraction_count,
    kth_threshold,
    select_extreme,
    select_random,
    zeroed,
)
from speech_llama.generate import load_model

QA_DATA = Path(__file__).resolve().parents[1] / "data" / "general_knowledge_qa.jsonl"


def reference_selection(tensors: dict[str, torch.Tensor], k: int, which: str) -> set[tuple[str, int]]:
    """Brute force over one concatenation: order by value (desc for top), ties by position."""
    entries = [
        (float(value), position, name, index)
        for position, (name, index, value) in enumerate(
            (name, index, value) for name, tensor in tensors.items() for index, value in enumerate(tensor.reshape(-1).tolist())
        )
    ]
    key = (lambda e: (-e[0], e[1])) if which == "top" else (lambda e: (e[0], e[1]))
    return {(name, index) for _, _, name, index in sorted(entries, key=key)[:k]}


def as_set(selection: dict[str, torch.Tensor]) -> set[tuple[str, int]]:
    return {(name, int(index)) for name, indices in selection.items() for index in indices}


def tied_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Few distinct values (heavy ties), zeros included, several shapes."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randint(0, 4, (7, 5), generator=generator).float(),
        "b": torch.randint(0, 4, (11,), generator=generator).float() * 0.5,
        "c": torch.randint(0, 3, (3, 4), generator=generator).float(),
    }


@pytest.mark.parametrize("which", ["top", "bottom"])
def test_extreme_selection_is_exact_under_ties(which):
    tensors = tied_tensors()
    total = sum(t.numel() for t in tensors.values())
    for k in range(total + 1):
        chosen = select_extreme(tensors, k, which)
        assert sum(i.numel() for i in chosen.values()) == k
        assert as_set(chosen) == reference_selection(tensors, k, which), (which, k)


def test_threshold_equals_kthvalue_on_continuous_values():
    generator = torch.Generator().manual_seed(1)
    tensors = {f"t{i}": torch.rand(n, generator=generator) ** 3 for i, n in enumerate((1000, 37, 4096))}
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    for k in (1, 17, 500, flat.numel()):
        assert kth_threshold(tensors, k, "bottom") == float(torch.kthvalue(flat, k).values)
        assert kth_threshold(tensors, k, "top") == float(torch.kthvalue(flat, flat.numel() - k + 1).values)
    with pytest.raises(ValueError, match="k must be"):
        kth_threshold(tensors, flat.numel() + 1, "top")


def test_random_selection_is_exact_distinct_and_seeded():
    sizes = {"a": 1000, "b": 10, "c": 5000}
    chosen = select_random(sizes, 180, seed=3)
    assert sum(i.numel() for i in chosen.values()) == 180
    for name, indices in chosen.items():
        assert indices.unique().numel() == indices.numel() and 0 <= int(indices.min()) and int(indices.max()) < sizes[name]
    assert as_set(chosen) == as_set(select_random(sizes, 180, seed=3))
    assert as_set(chosen) != as_set(select_random(sizes, 180, seed=4))


def test_global_and_per_matrix_counts():
    tensors = tied_tensors(seed=2)
    total = sum(t.numel() for t in tensors.values())
    for kind in ("top", "bottom", "random"):
        global_count = sum(i.numel() for i in build_selection(tensors, 0.1, kind, "global", seed=0).values())
        assert global_count == fraction_count(0.1, total)
        per_matrix = build_selection(tensors, 0.1, kind, "per_matrix", seed=0)
        for name, tensor in tensors.items():
            expected = fraction_count(0.1, tensor.numel())
            assert (per_matrix[name].numel() if name in per_matrix else 0) == expected
    with pytest.raises(ValueError, match="fraction"):
        build_selection(tensors, 1.5, "top")


def test_zeroing_restores_every_parameter_bit_exactly(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    decoder = {n: p for n, p in model.named_parameters() if n.startswith("language_model.model.layers.")}
    importances = {n: p.detach().abs().float() for n, p in decoder.items()}  # |θ| as a stand-in
    selection = build_selection(importances, 0.2, "top")
    with pytest.raises(RuntimeError, match="boom"):
        with zeroed(model, selection) as saved:
            assert saved.count == fraction_count(0.2, sum(t.numel() for t in importances.values()))
            for name, indices in selection.items():
                assert (dict(model.named_parameters())[name].detach().reshape(-1)[indices] == 0).all()
            raise RuntimeError("boom")  # restoring must survive an error inside the block
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), original[name]), name


def random_importance_artifact(tiny_model_dir, tmp_path):
    """|θ|·U(0,1) over the tiny model's decoder, saved as an importance artifact → (path, importances)."""
    model, _ = load_model(tiny_model_dir)
    decoder = {n: p for n, p in model.named_parameters() if n.startswith("language_model.model.layers.")}
    importances = {n: (p.detach().abs() * torch.rand_like(p)).float() for n, p in decoder.items()}
    artifact = tmp_path / "imp.safetensors"
    summary = build_summary(importances, num_layers=4, model=str(tiny_model_dir), input="text", num_samples=1, num_tokens=1, reduction="mean")
    save_artifact(artifact, importances, summary)
    return artifact, importances


def test_deactivate_cli_writes_the_contract(tiny_model_dir, tmp_path):
    artifact, importances = random_importance_artifact(tiny_model_dir, tmp_path)
    out = tmp_path / "r.json"
    code = importance_main([
        "deactivate", "--model", str(tiny_model_dir), "--importance", str(artifact), "--data", str(QA_DATA),
        "--max-samples", "6", "--fraction", "0.05", "--batch-size", "6", "--out", str(out), "--no-progress",
    ])
    assert code == 0
    result = json.loads(out.read_text())
    assert {"fraction", "selection", "input", "ppl"} <= set(result)
    assert result["fraction"] == 0.05 and result["selection"] == "global" and result["input"] == "text"
    assert set(result["ppl"]) == {"base", "top", "bottom", "random"}
    assert all(value > 1 for value in result["ppl"].values())
    total = sum(t.numel() for t in importances.values())
    assert result["counts"]["analysed"] == total
    assert result["counts"]["top"] == result["counts"]["bottom"] == result["counts"]["random"] == fraction_count(0.05, total)


def test_deactivate_in_bfloat16_zeroes_the_same_count_and_records_the_precision(tiny_model_dir, tmp_path):
    artifact, importances = random_importance_artifact(tiny_model_dir, tmp_path)
    results = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        assert importance_main([
            "deactivate", "--model", str(tiny_model_dir), "--importance", str(artifact), "--data", str(QA_DATA),
            "--max-samples", "6", "--fraction", "0.05", "--batch-size", "3", "--out", str(out), "--no-progress",
            "--dtype", dtype,
        ]) == 0
        results[dtype] = json.loads(out.read_text())
    assert results["bfloat16"]["dtype"] == "bfloat16" and results["float32"]["dtype"] == "float32"
    assert results["bfloat16"]["counts"] == results["float32"]["counts"]
    assert results["bfloat16"]["ppl"]["base"] == pytest.approx(results["float32"]["ppl"]["base"], rel=0.05)


def test_deactivate_refuses_an_artifact_of_another_model(tiny_model_dir, tmp_path):
    name = "language_model.model.layers.0.mlp.up_proj.weight"
    importances = {name: torch.ones(5, 5)}
    summary = build_summary(importances, num_layers=4, model="other", input="text", num_samples=1, num_tokens=1, reduction="mean")
    artifact = save_artifact(tmp_path / "other.safetensors", importances, summary)
    code = importance_main([
        "deactivate", "--model", str(tiny_model_dir), "--importance", str(artifact), "--data", str(QA_DATA),
        "--max-samples", "2", "--out", str(tmp_path / "r.json"), "--no-progress",
    ])
    assert code == 2 and not (tmp_path / "r.json").exists()


@pytest.fixture(scope="module")
def table1_small(offline_mini):
    """Real weights, small sizes (the full measurement is in docs/importance.md): importance on 16 QA
    records, perplexity on 16 others with the top / bottom / random 3 % zeroed."""
    from importance.estimate import estimate_importance, load_slice, select_parameters, sharded_batches
    from speech_llama.collate import QACollator
    from speech_llama.perplexity import response_perplexity

    model, processor = offline_mini
    d = load_slice(QA_DATA, max_samples=16)
    held_out = load_slice(QA_DATA, skip=16, max_samples=16)
    result = estimate_importance(model, sharded_batches(d, QACollator(processor, input="text"), 8), select_parameters(model))

    def ppl() -> float:
        return response_perplexity(model, processor, held_out, input="text", batch_size=16).ppl

    measured = {"base": ppl()}
    for kind in ("top", "bottom", "random"):
        with zeroed(model, build_selection(result.importances, 0.03, kind)):
            measured[kind] = ppl()
    return measured


@pytest.mark.real_weights
def test_table1_top_and_random_on_offline_mini(table1_small):
    ppl = table1_small
    assert ppl["top"] >= 3 * ppl["base"], ppl
    assert ppl["base"] < ppl["random"] < ppl["top"], ppl


@pytest.mark.real_weights
@pytest.mark.xfail(strict=True, reason=(
    "known deviation, measured: first-order |θ·g| is ≈ 0 for the input columns that read SmolLM2's "
    "massive-activation dims (507, 247), so the global bottom 3 % removes whole such columns and PPL rises "
    "~15× (docs/importance.md, Table 1); strict so that a change in the method that fixes it is noticed"
))
def test_table1_bottom_is_harmless_on_offline_mini(table1_small):
    ppl = table1_small
    assert ppl["bottom"] <= 1.05 * ppl["base"], ppl
