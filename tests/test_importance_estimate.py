"""Importance estimation: Taylor vs exact Eq. 1, reductions, NaN batches, artifacts, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from importance.artifact import check_against_model, load_artifact, save_artifact, build_summary
from importance.cli import main as importance_main
from importance.estimate import (
    estimate_importance,
    select_parameters,
    sharded_batches,
)
from speech_llama.collate import QACollator
from speech_llama.perplexity import response_nll
from speech_llama.generate import load_model
from speech_llama.records import load_records

REPO = Path(__file__).resolve().parents[1]
QA_DATA = REPO / "data" / "general_knowledge_qa.jsonl"


@pytest.fixture(scope="module")
def model64(tiny_model_dir):
    """A private float64 copy of the tiny model (exact-loss comparisons need the precision)."""
    model, processor = load_model(tiny_model_dir)
    return model.double(), processor


@pytest.fixture(scope="module")
def records():
    return load_records(QA_DATA, max_samples=6)


def batches_of(processor, records, batch_size):
    return list(sharded_batches(records, QACollator(processor, input="text"), batch_size))


@torch.no_grad()
def mean_loss(model, batches) -> float:
    """L(D): Σ_b S_b / Σ_b n_b, in the model's precision."""
    total, tokens = 0.0, 0
    for _, _, batch in batches:
        loss_sum, count = response_nll(model, batch)
        total, tokens = total + float(loss_sum), tokens + count
    return total / tokens


def test_taylor_matches_exact_loss_change_for_small_weights(model64, records):
    """Eq. 2 ≈ Eq. 1 when θ_i is small: |θ_i g_i| vs |L(D) − L(D; θ_i = 0)|, per single weight."""
    model, processor = model64
    batches = batches_of(processor, records, batch_size=3)
    names = [
        "language_model.model.layers.0.self_attn.v_proj.weight",
        "language_model.model.layers.1.mlp.down_proj.weight",
        "language_model.model.layers.2.self_attn.q_proj.weight",
        "language_model.model.layers.3.mlp.up_proj.weight",
        "language_model.model.layers.3.post_attention_layernorm.weight",
    ]
    params = dict(model.named_parameters())
    # Pick the entry with the largest gradient in each tensor, so the loss change is far above
    # the rounding noise, and scale it to 1e-3 so the second-order term is negligible.
    probe = estimate_importance(model, batches, {n: params[n] for n in names})
    chosen = {}
    with torch.no_grad():
        for name in names:
            gradient_proxy = probe.importances[name].reshape(-1) / params[name].detach().abs().reshape(-1).float().clamp_min(1e-12)
            index = int(gradient_proxy.argmax())
            params[name].view(-1)[index] = 1e-3
            chosen[name] = index
    estimate = estimate_importance(model, batches, {n: params[n] for n in names})
    base = mean_loss(model, batches)
    for name, index in chosen.items():
        with torch.no_grad():
            params[name].view(-1)[index] = 0.0
            exact = abs(base - mean_loss(model, batches))
            params[name].view(-1)[index] = 1e-3
        taylor = float(estimate.importances[name].reshape(-1)[index])
        assert exact > 1e-9, f"{name}: the loss barely depends on the chosen weight"
        assert taylor == pytest.approx(exact, rel=0.02), name


def test_reductions_match_their_definitions(model64, records):
    """mean = |θ·∇L(D)| whatever the batching; abs_per_batch = Σ_b |θ·∇S_b| / N ≥ mean."""
    model, processor = model64
    names = ["language_model.model.layers.1.self_attn.o_proj.weight", "language_model.model.layers.2.input_layernorm.weight"]
    params = {n: p for n, p in model.named_parameters() if n in names}
    batches = batches_of(processor, records, batch_size=2)

    # Reference by plain autograd: per-batch gradients of the summed loss S_b.
    per_batch, tokens = [], 0
    for _, _, batch in batches:
        loss_sum, count = response_nll(model, batch)
        per_batch.append(torch.autograd.grad(loss_sum, list(params.values())))
        tokens += count
    values = [p.detach() for p in params.values()]
    expected_mean = [(v * sum(g[i] for g in per_batch)).abs() / tokens for i, v in enumerate(values)]
    expected_abs = [sum((v * g[i]).abs() for g in per_batch) / tokens for i, v in enumerate(values)]

    mean = estimate_importance(model, batches, params, reduction="mean")
    one_batch = estimate_importance(model, batches_of(processor, records, batch_size=6), params, reduction="mean")
    per_batch_abs = estimate_importance(model, batches, params, reduction="abs_per_batch")
    assert mean.num_tokens == one_batch.num_tokens == tokens
    for i, name in enumerate(params):
        torch.testing.assert_close(mean.importances[name].double(), expected_mean[i], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(per_batch_abs.importances[name].double(), expected_abs[i], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(one_batch.importances[name], mean.importances[name], rtol=1e-4, atol=1e-9)
        assert (per_batch_abs.importances[name] >= mean.importances[name] * (1 - 1e-5) - 1e-9).all()
    with pytest.raises(ValueError, match="reduction"):
        estimate_importance(model, batches, params, reduction="median")


def test_non_finite_batch_is_skipped_and_not_added(model64, records):
    """A NaN loss on batch 1 (injected by a forward hook) is counted and leaves no trace."""
    model, processor = model64
    params = select_parameters(model, r"layers\.[02]\.mlp\.")
    batches = batches_of(processor, records, batch_size=2)
    calls = {"n": 0}

    def poison_second_call(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    handle = model.language_model.model.norm.register_forward_hook(poison_second_call)
    try:
        with_nan = estimate_importance(model, batches, params)
    finally:
        handle.remove()
    clean = estimate_importance(model, [batches[0], batches[2]], params)
    assert with_nan.skipped_batches == 1 and with_nan.skipped_at == [1]
    assert with_nan.num_tokens == clean.num_tokens and with_nan.num_samples == 4
    for name in params:
        assert torch.isfinite(with_nan.importances[name]).all()
        torch.testing.assert_close(with_nan.importances[name], clean.importances[name], rtol=1e-6, atol=0)


def test_estimation_restores_flags_and_frees_gradients(tiny_model_dir, records):
    model, processor = load_model(tiny_model_dir)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    params = select_parameters(model)  # default: every decoder-layer parameter
    assert params and all(name.startswith("language_model.model.layers.") for name in params)
    result = estimate_importance(model, batches_of(processor, records, batch_size=3), params)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert set(result.importances) == set(params)
    assert all(result.importances[n].shape == p.shape and result.importances[n].dtype == torch.float32 for n, p in params.items())
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(model, r"no_such_module")


def run_cli(*args: str) -> None:
    assert importance_main(list(args)) == 0


def test_cli_writes_the_contract_artifact(tiny_model_dir, tmp_path):
    out = tmp_path / "imp.safetensors"
    run_cli("importance", "--model", str(tiny_model_dir), "--data", str(QA_DATA), "--max-samples", "5",
            "--batch-size", "2", "--out", str(out), "--no-progress")
    summary = json.loads(out.with_suffix(".json").read_text())
    for key in ("model", "input", "num_samples", "num_tokens", "reduction", "layers", "modules", "created", "skipped_batches", "params"):
        assert key in summary
    assert summary["num_samples"] == 5 and summary["input"] == "text" and summary["reduction"] == "mean"
    artifact = load_artifact(out)
    tensors = artifact.load_all()
    assert len(summary["layers"]) == 4
    assert sum(summary["layers"]) == pytest.approx(sum(float(t.sum()) for t in tensors.values()), rel=1e-5)
    assert summary["modules"]["mlp.down_proj.weight"][2] == pytest.approx(
        float(tensors["language_model.model.layers.2.mlp.down_proj.weight"].sum()), rel=1e-5
    )
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_speech_input_reaches_the_adaptor_only_when_asked(tiny_model_dir, tmp_path):
    """S2T batches: decoder layers by default; `--params` can add the adaptor (the encoder is
    frozen and stays out)."""
    import soundfile

    from helpers import noise_clip

    lines = []
    for index in range(2):
        soundfile.write(tmp_path / f"q{index}.wav", noise_clip(1.0 + index, seed=index), 16000)
        lines.append(json.dumps({"question": f"question {index}", "answers": ["Paris"], "audio": f"q{index}.wav"}))
    data = tmp_path / "speech.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "speech.safetensors"
    run_cli("importance", "--model", str(tiny_model_dir), "--data", str(data), "--input", "speech",
            "--params", r"language_model\.model\.layers\.|^adaptor\.", "--out", str(out), "--no-progress")
    artifact = load_artifact(out)
    assert artifact.summary["input"] == "speech" and artifact.summary["num_samples"] == 2
    tensors = artifact.load_all()
    adaptor = [name for name in tensors if name.startswith("adaptor.")]
    assert len(adaptor) == 4  # biases start at 0, so only the weights can score: θ·g = 0 for θ = 0
    assert all(float(tensors[name].sum()) > 0 for name in adaptor if name.endswith("weight"))
    assert not any(name.startswith("encoder.") for name in tensors)
    assert set(artifact.summary["other"]) == set(adaptor)  # outside the decoder layers


def test_artifact_mismatch_names_the_first_difference(tiny):
    model, _ = tiny
    name = "language_model.model.layers.1.mlp.up_proj.weight"
    shape = tuple(dict(model.named_parameters())[name].shape)
    check_against_model({name: shape}, model)  # matches: no error
    with pytest.raises(ValueError, match=rf"{name}.*expects shape \({shape[0]}, {shape[1]}\).*has \(3, 3\)"):
        check_against_model({name: (3, 3)}, model)
    with pytest.raises(ValueError, match="layers.9.mlp.up_proj.weight.*not in the model"):
        check_against_model({"language_model.model.layers.9.mlp.up_proj.weight": shape}, model)


def test_save_refuses_a_summary_without_contract_keys(tmp_path):
    tensors = {"language_model.model.layers.0.x.weight": torch.ones(2, 2)}
    summary = build_summary(tensors, num_layers=1, model="m", input="text", num_samples=1, num_tokens=1, reduction="mean")
    save_artifact(tmp_path / "ok.safetensors", tensors, summary)
    del summary["layers"]
    with pytest.raises(ValueError, match="layers"):
        save_artifact(tmp_path / "bad.safetensors", tensors, summary)
    with pytest.raises(ValueError, match=".safetensors"):
        save_artifact(tmp_path / "bad.pt", tensors, summary)


@pytest.mark.slow
def test_two_processes_equal_one(tiny_model_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (torchrun underneath, gloo) sums
    the ranks' accumulators; 5 batches split unevenly (3 + 2) give the single-process result."""
    common = ["--model", str(tiny_model_dir), "--data", str(QA_DATA), "--max-samples", "9", "--batch-size", "2",
              "--reduction", "abs_per_batch", "--no-progress"]
    single, double = tmp_path / "single.safetensors", tmp_path / "double.safetensors"
    run_cli("importance", *common, "--out", str(single))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]
    completed = subprocess.run(
        [*launcher, "-m", "importance.cli", "importance", *common, "--out", str(double)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, two = load_artifact(single), load_artifact(double)
    assert two.summary["processes"] == 2
    for key in ("num_tokens", "num_samples", "skipped_batches"):
        assert one.summary[key] == two.summary[key]
    tensors_one, tensors_two = one.load_all(), two.load_all()
    assert tensors_one.keys() == tensors_two.keys()
    for name in tensors_one:
        torch.testing.assert_close(tensors_two[name], tensors_one[name], rtol=1e-5, atol=1e-7 * float(tensors_one[name].max()))
