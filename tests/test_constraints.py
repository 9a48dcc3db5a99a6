"""region_freeze and importance_anchor (trainers/constraints.py) on the tiny random model, in one process:
the selected region, frozen entries bit-identical through training (weight decay on, resumed or not),
the anchor's gradient against autograd, its pull toward the base, arguments and the card.
The two-process (FSDP2) runs are in test_fsdp.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from test_trainers import write_records  # noqa: E402

from importance.artifact import build_summary, load_artifact, save_artifact  # noqa: E402
from importance.deactivate import build_selection  # noqa: E402
from trainers.arguments import parse_args  # noqa: E402
from trainers.constraints import (  # noqa: E402
    ConstraintError,
    ImportanceAnchor,
    RegionFreeze,
    attach_to_optimizer,
    normalised_importance,
    region_indices,
)

CONFIGS = REPO / "trainers" / "configs" / "tiny-random"
DEMO_QA = REPO / "data" / "demo_qa.jsonl"
FRACTION = 0.05


def tiny_importance(model_dir: Path, out: Path) -> Path:
    """The tiny model's text importance on a few demo questions (a real artifact, seconds)."""
    from importance.cli import main

    path = out / "text.safetensors"
    assert main(["importance", "--model", str(model_dir), "--data", str(DEMO_QA), "--input", "text", "--max-samples",
                 "6", "--batch-size", "2", "--no-progress", "--out", str(path)]) in (0, None)
    return path


def train(model_dir: Path, data: Path, out: Path, method: str, importance: Path, *extra: str) -> Path:
    from trainers.run import main

    main([str(CONFIGS / "full.yaml"), "--model_name_or_path", str(model_dir), "--train_data", str(data),
          "--method", method, "--importance", str(importance), "--output_dir", str(out),
          "--max_steps", "3", "--save_steps", "2", "--learning_rate", "1e-2", "--weight_decay", "0.1",
          "--lr_scheduler_type", "constant", "--warmup_steps", "0", *extra])
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors |= {name: handle.get_tensor(name) for name in handle.keys()}
    return tensors


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Importance, then 3 steps of region_freeze, the same resumed from its checkpoint-2, importance_anchor
    (λ 1e3) and Full-FT, every one at lr 1e-2 with weight decay 0.1."""
    root = tmp_path_factory.mktemp("constraints")
    importance = tiny_importance(tiny_model_dir, root)
    data = write_records(root / "data", count=6)
    region = ["--region_fraction", str(FRACTION)]
    return {
        "root": root, "importance": importance, "data": data,
        "region": train(tiny_model_dir, data, root / "region", "region_freeze", importance, *region),
        "resumed": train(tiny_model_dir, data, root / "resumed", "region_freeze", importance, *region,
                         "--resume_from_checkpoint", str(root / "region" / "checkpoint-2")),
        "anchor": train(tiny_model_dir, data, root / "anchor", "importance_anchor", importance, "--anchor_lambda", "1e3"),
        "uniform": train(tiny_model_dir, data, root / "uniform", "importance_anchor", importance, "--anchor_lambda", "1e3",
                         "--anchor_weighting", "uniform"),
        "full": train(tiny_model_dir, data, root / "full", "full", importance),
    }


def test_region_is_the_top_fraction_deactivate_selects(runs):
    importances = load_artifact(runs["importance"]).load_all()
    assert {name: index.tolist() for name, index in region_indices(runs["importance"], FRACTION).items()} == \
        {name: index.tolist() for name, index in build_selection(importances, FRACTION, "top", "global").items()}
    per_matrix = region_indices(runs["importance"], FRACTION, "per_matrix")
    for name, tensor in importances.items():
        assert per_matrix[name].numel() == round(FRACTION * tensor.numel())


def test_row_and_column_regions_are_whole_lines(tmp_path):
    matrix = torch.zeros(10, 4)
    matrix[7] = 5.0  # row 7 holds the most importance
    matrix[:, 2] += 3.0  # column 2 the most among columns
    path = tmp_path / "x.safetensors"
    importances = {"language_model.model.layers.0.mlp.down_proj.weight": matrix}
    save_artifact(path, importances, build_summary(importances, num_layers=1, model="t", input="text", num_samples=1,
                                                   num_tokens=1, reduction="sum"))
    name = next(iter(importances))
    rows = region_indices(path, 0.1, "per_matrix", "row")[name]
    assert rows.tolist() == [28, 29, 30, 31]  # row 7 of 4 columns
    columns = region_indices(path, 0.25, "per_matrix", "column")[name]
    assert columns.tolist() == [row * 4 + 2 for row in range(10)]
    with pytest.raises(ConstraintError, match="region_unit row ranks rows or columns inside each matrix"):
        region_indices(path, 0.1, "global", "row")
    with pytest.raises(ConstraintError, match=r"region_fraction must be in \(0, 1\)"):
        region_indices(path, 1.0)


def test_frozen_entries_stay_bit_identical_and_the_rest_trains(runs, tiny_model_dir):
    base, trained = weights(tiny_model_dir), weights(runs["region"] / "final")
    region = region_indices(runs["importance"], FRACTION)
    assert sum(index.numel() for index in region.values()) > 0
    for name, index in region.items():
        assert torch.equal(trained[name].reshape(-1)[index], base[name].reshape(-1)[index]), name
        free = torch.ones(base[name].numel(), dtype=torch.bool)
        free[index] = False
        assert not torch.equal(trained[name].reshape(-1)[free], base[name].reshape(-1)[free]), name
    # the frozen entries never entered AdamW's moments
    state = torch.load(runs["region"] / "checkpoint-2" / "optimizer.pt", weights_only=False)["state"]
    names = [name for name, _ in _trainable(tiny_model_dir)]
    moments = {names[index]: entry["exp_avg"] for index, entry in state.items()}
    for name, index in region.items():
        assert moments[name].reshape(-1)[index].abs().max() == 0, name


def _trainable(model_dir: Path):
    """(name, parameter) in the optimizer's order: the trainer's groups list decoder tensors by name order."""
    from trainers.arguments import ModelArguments
    from trainers.run import load_for_training
    from trainers.trainer import SpeechLlamaTrainer
    from transformers import TrainingArguments

    model, _ = load_for_training(ModelArguments(model_name_or_path=str(model_dir)))
    trainer = SpeechLlamaTrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", use_cpu=True,
                                                                     report_to="none", weight_decay=0.1))
    by_id = {id(parameter): name for name, parameter in model.named_parameters()}
    return [(by_id[id(p)], p) for group in trainer.parameter_groups() for p in group["params"]]


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(runs):
    straight, resumed = weights(runs["region"] / "final"), weights(runs["resumed"] / "final")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_anchor_gradient_is_the_gradient_of_its_penalty(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    base = {"weight": layer.weight.detach().clone(), "bias": layer.bias.detach().clone()}
    save_file(base, str(tmp_path / "model.safetensors"))
    importance = {"weight": torch.rand(4, 6) * 3, "bias": torch.rand(4)}
    with torch.no_grad():
        layer.weight.add_(torch.randn(4, 6))
        layer.bias.add_(torch.randn(4))
    anchor = ImportanceAnchor(layer, importance, [tmp_path / "model.safetensors"], strength=0.7)
    penalty = sum(0.7 * (importance[name] * (parameter - base[name]) ** 2).sum() for name, parameter in layer.named_parameters())
    penalty.backward()
    expected = {name: parameter.grad.clone() for name, parameter in layer.named_parameters()}
    layer.zero_grad(set_to_none=False)
    anchor.prepare_gradients()
    for name, parameter in layer.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name
    assert anchor.penalty() == pytest.approx(float(penalty.detach()), rel=1e-5)
    anchor.prepare_gradients()  # once per step: clipping and the optimizer hook both ask
    for name, parameter in layer.named_parameters():
        assert torch.allclose(parameter.grad, expected[name], atol=1e-6), name


def test_region_freeze_repairs_what_weight_decay_moves(tmp_path):
    layer = torch.nn.Linear(5, 3, bias=False)
    save_file({"weight": layer.weight.detach().clone()}, str(tmp_path / "model.safetensors"))
    before = layer.weight.detach().clone()
    freeze = RegionFreeze(layer, {"weight": torch.tensor([0, 7, 14])}, [tmp_path / "model.safetensors"])
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.5)
    attach_to_optimizer(optimizer, lambda: freeze)
    for _ in range(3):
        layer(torch.randn(2, 5)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    flat, base = layer.weight.detach().reshape(-1), before.reshape(-1)
    assert torch.equal(flat[[0, 7, 14]], base[[0, 7, 14]])
    assert (flat[[1, 2, 3]] != base[[1, 2, 3]]).all()


def test_the_anchor_pulls_toward_the_base_weights(runs, tiny_model_dir):
    base = weights(tiny_model_dir)
    normalised, _ = normalised_importance(runs["importance"])

    def weighted_distance(folder: Path) -> float:
        trained = weights(folder / "final")
        return sum(float((normalised[name] * (trained[name] - base[name]) ** 2).sum()) for name in normalised)

    assert weighted_distance(runs["anchor"]) < 0.5 * weighted_distance(runs["full"])


def test_the_uniform_anchor_weighs_every_analysed_entry_one(runs, tiny_model_dir):
    importance, _ = normalised_importance(runs["importance"])
    uniform, mean = normalised_importance(runs["importance"], "uniform")
    assert mean == 1.0 and uniform.keys() == importance.keys()
    assert all(torch.equal(uniform[name], torch.ones_like(importance[name])) for name in importance)
    base = weights(tiny_model_dir)

    def distance(folder: Path) -> float:
        trained = weights(folder / "final")
        return sum(float(((trained[name] - base[name]) ** 2).sum()) for name in importance)

    assert distance(runs["uniform"]) < 0.5 * distance(runs["full"])
    # plain L2 pulls every entry alike, so it ends elsewhere than the importance-weighted anchor
    assert distance(runs["uniform"]) != pytest.approx(distance(runs["anchor"]), rel=1e-3)


def test_the_card_states_the_method(runs):
    region_card = (runs["region"] / "final" / "README.md").read_text()
    assert "region freezing" in region_card and "5.00%" in region_card and str(runs["importance"]) in region_card
    anchor_card = (runs["anchor"] / "final" / "README.md").read_text()
    assert "importance anchoring" in anchor_card and "λ = 1000.0" in anchor_card and "importance over its mean" in anchor_card
    uniform_card = (runs["uniform"] / "final" / "README.md").read_text()
    assert "Ĩ = 1 on every analysed parameter (uniform: L2-SP)" in uniform_card


@pytest.mark.parametrize("extra, message", [
    (["--method", "region_freeze"], "method region_freeze needs importance"),
    (["--method", "importance_anchor", "--importance", "x.safetensors", "--anchor_lambda", "0"], "anchor_lambda must be > 0"),
    (["--method", "importance_anchor", "--importance", "x.safetensors", "--anchor_weighting", "fisher"],
     "anchor_weighting 'fisher': choose one of importance, uniform"),
    (["--method", "region_freeze", "--importance", "x.safetensors", "--region_unit", "row"],
     "region_unit row ranks rows or columns inside each matrix"),
    (["--method", "region_freeze", "--importance", "x.safetensors", "--region_unit", "diagonal",
      "--region_selection", "per_matrix"], "unknown region_unit 'diagonal'"),
])
def test_bad_constraint_arguments_are_named(extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--model_name_or_path", "m", "--train_data", "d.jsonl", *extra])


def test_a_missing_artifact_fails_before_the_weights_load(tmp_path, tiny_model_dir):
    from trainers.run import main

    data = write_records(tmp_path / "data", count=2)
    with pytest.raises(ConstraintError, match="expected an importance artifact X.safetensors with its X.json"):
        main([str(CONFIGS / "full.yaml"), "--model_name_or_path", str(tiny_model_dir), "--train_data", str(data),
              "--method", "region_freeze", "--importance", str(tmp_path / "none.safetensors"),
              "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.real_weights
@pytest.mark.slow
def test_both_methods_train_and_export_on_real_weights(tmp_path, offline_mini_dir):
    """offline-mini (SmolLM2-135M + Whisper tiny.en): its own text importance, one step of each method,
    the frozen region bit-identical in final/, which loads through the Auto classes."""
    from transformers import AutoModelForCausalLM

    importance = tiny_importance(offline_mini_dir, tmp_path)
    data = write_records(tmp_path / "data", count=2)
    short = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--max_length", "64", "--save_strategy", "no"]
    region = train(offline_mini_dir, data, tmp_path / "region", "region_freeze", importance, *short)
    anchor = train(offline_mini_dir, data, tmp_path / "anchor", "importance_anchor", importance, *short)
    base, trained = weights(offline_mini_dir), weights(region / "final")
    selected = region_indices(importance, 0.01)
    assert sum(index.numel() for index in selected.values()) > 100_000  # 1 % of ~106 M decoder entries
    for name, index in selected.items():
        assert torch.equal(trained[name].reshape(-1)[index], base[name].reshape(-1)[index]), name
    for folder in (region, anchor):
        model = AutoModelForCausalLM.from_pretrained(folder / "final", trust_remote_code=True)
        assert type(model).__name__ == "SpeechLlamaForCausalLM"
