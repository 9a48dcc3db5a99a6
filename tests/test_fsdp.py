"""FSDP2 on two CPU processes (gloo): importance and Layer-LR / LoRA training against one process.

Two `accelerate launch --config_file trainers/configs/accelerate/fsdp_cpu.yaml` launches
(tests/fsdp_driver.py), shared by the tests below through module fixtures:
1. importance, text input / `mean` with one batch's loss NaN on rank 1 only, and speech
   input / `abs_per_batch`, both in float64 weights; compared with the same two runs in this process.
   Why float64 (text too since a machine where the fp32 text artifacts differed by 5.5e-6): through the fp32 Whisper encoder the row split changes float32 rounding
   enough (measured: 2.5e-6 max-relative between the one- and two-process fp32 artifacts, while
   the one-process fp32 artifact itself is 5.7e-6 from the float64 one) that 1e-6 would test the
   rounding, not the sharding; in float64 the two agree to float32 rounding of the accumulators;
2. training: Layer-LR with checkpoints, the same run resumed from its first checkpoint, LoRA;
   compared with a one-process Layer-LR run of the same config.
The in-process tests at the top (settings, errors, the streamed safetensors writer, the memory
model) take milliseconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import fsdp_driver  # noqa: E402
from test_constraints import tiny_importance, weights  # noqa: E402
from trainers.constraints import region_indices  # noqa: E402
from test_trainers import write_records  # noqa: E402

from importance.artifact import load_artifact, write_safetensors  # noqa: E402
from speech_llama.fsdp import (  # noqa: E402
    FSDPError,
    FSDPSettings,
    check_sharding_settings,
    fsdp_settings,
    memory_per_rank,
    wrap_classes,
)

CONFIG = REPO / "trainers" / "configs" / "accelerate" / "fsdp_cpu.yaml"
QA_DATA = REPO / "data" / "general_knowledge_qa.jsonl"
POISONED_BATCH = 1
RELATIVE = 1e-6  # every tensor: max |two − one| ≤ RELATIVE · max |one|


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(*args: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file fsdp_cpu.yaml tests/fsdp_driver.py ARGS` (two CPU processes)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
               "--main_process_port", str(free_port()), str(REPO / "tests" / "fsdp_driver.py"), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "Error" in line][:20]
        raise AssertionError(f"launch failed ({result.returncode}):\n" + "\n".join(errors) + "\n" + result.stderr[-4000:])
    return result


# --- in-process: settings, errors, writer, memory model ---------------------------------------------


def test_settings_come_from_the_launcher_environment():
    assert fsdp_settings({}) is None
    settings = fsdp_settings({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                              "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer,WhisperEncoderLayer",
                              "FSDP_CPU_RAM_EFFICIENT_LOADING": "True", "ACCELERATE_MIXED_PRECISION": "bf16"})
    assert settings.version == 2 and settings.layer_classes == ("LlamaDecoderLayer", "WhisperEncoderLayer")
    assert settings.cpu_ram_efficient_loading and settings.mixed_precision == "bf16"
    with pytest.raises(FSDPError, match="FSDP_VERSION"):
        fsdp_settings({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "two"})


def test_wrap_classes_must_exist_in_the_model(tiny):
    model, _ = tiny
    assert set(wrap_classes(model, FSDPSettings())) == {"WhisperEncoderLayer", "LlamaDecoderLayer"}  # _no_split_modules
    with pytest.raises(FSDPError, match="MistralDecoderLayer.*LlamaDecoderLayer"):
        wrap_classes(model, FSDPSettings(layer_classes=("MistralDecoderLayer",)))
    with pytest.raises(FSDPError, match="TRANSFORMER_BASED_WRAP"):
        wrap_classes(model, FSDPSettings(auto_wrap_policy="SIZE_BASED_WRAP"))
    with pytest.raises(FSDPError, match="fsdp_version 2"):
        check_sharding_settings(FSDPSettings(version=1))
    with pytest.raises(FSDPError, match="fsdp_offload_params"):
        check_sharding_settings(FSDPSettings(offload_params=True))


def test_mixed_text_and_speech_batches_are_refused_under_fsdp(monkeypatch, tiny_model_dir):
    from trainers.arguments import ArgumentsError, parse_args

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ArgumentsError, match="mix_text_ratio 0.5 cannot be used under FSDP"):
        parse_args([str(REPO / "trainers" / "configs" / "tiny-random" / "full.yaml"), "--model_name_or_path",
                    str(tiny_model_dir), "--mix_text_ratio", "0.5"])


def test_streamed_safetensors_reads_back(tmp_path):
    tensors = {"a.weight": torch.randn(3, 5), "b.bias": torch.arange(7.0), "c": torch.ones(1)}
    shapes = {name: tuple(t.shape) for name, t in sorted(tensors.items())}
    path = tmp_path / "x.safetensors"
    write_safetensors(path, shapes, sorted(tensors.items()), {"format": "test"})
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "test"}
        for name, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(name), tensor)
    with pytest.raises(ValueError, match="expected 'b.bias'"):
        write_safetensors(path, shapes, [("a.weight", tensors["a.weight"]), ("c", tensors["c"])], {})


def test_memory_model_shards_every_term():
    one = memory_per_rank("importance", 10**9, 1, 2)
    eight = memory_per_rank("importance", 10**9, 8, 2)
    assert one["sharded"] == 6 * 10**9 and eight["sharded"] == 6 * 10**9 // 8
    assert memory_per_rank("full", 10**9, 8, 2)["sharded"] == 16 * 10**9 // 8
    lora = memory_per_rank("lora", 10**9, 8, 2, trainable=10**7)
    assert lora["sharded"] == (2 * (10**9 - 10**7) + 16 * 10**7) // 8
    with pytest.raises(ValueError, match="unknown method"):
        memory_per_rank("adam", 1, 1)


def test_memory_model_gathers_a_trained_root_with_its_gradient():
    """A unit: two copies, gradient, fp32 reduce-scatter buffer; the root: its weights, and when trained
    (Full-FT, Layer-LR) also its gradient and buffer (bench/real_shapes.py measured this at vocab 128 257)."""
    unit, root = 10**6, 10**7
    assert memory_per_rank("importance", 10**9, 2, 2, unit=unit, root=root)["gathered"] == 10 * unit + 2 * root
    assert memory_per_rank("lora", 10**9, 2, 2, trainable=10**7, unit=unit, root=root)["gathered"] == 10 * unit + 2 * root
    for method in ("full", "layer_lr"):
        assert memory_per_rank(method, 10**9, 2, 4, unit=unit, root=root)["gathered"] == 16 * unit + 12 * root
    assert memory_per_rank("full", 10**9, 1, 4, unit=unit, root=root)["gathered"] == 0


# --- importance: two processes vs one -----------------------------------------------------------------


@pytest.fixture(scope="module")
def importance_runs(tmp_path_factory, tiny_model_dir):
    """(one-process folder, two-process folder); each holds text.safetensors and speech.safetensors."""
    import importance.estimate as estimate
    from importance.cli import main

    root = tmp_path_factory.mktemp("fsdp-importance")
    speech = write_records(root / "speech-data", count=8)
    one, two = root / "one", root / "two"
    launch("importance", str(two), str(tiny_model_dir), str(QA_DATA), str(speech), str(POISONED_BATCH))
    text_args, speech_args = fsdp_driver.importance_runs(one, str(tiny_model_dir), str(QA_DATA), str(speech), POISONED_BATCH)
    original = estimate.response_nll
    estimate.response_nll = fsdp_driver.PoisonBatch(original, POISONED_BATCH, rank=0)
    try:
        assert main(text_args) == 0
    finally:
        estimate.response_nll = original
    assert main(speech_args) == 0
    return one, two


def worst_relative_difference(one, two) -> float:
    tensors_one, tensors_two = one.load_all(), two.load_all()
    assert tensors_one.keys() == tensors_two.keys()
    return max(float((tensors_two[name] - tensors_one[name]).abs().max() / tensors_one[name].abs().max())
               for name in tensors_one)


@pytest.mark.parametrize("run", ["text", "speech"])
def test_two_fsdp_processes_equal_one(importance_runs, run):
    one, two = (load_artifact(folder / f"{run}.safetensors") for folder in importance_runs)
    assert worst_relative_difference(one, two) <= RELATIVE
    for key in ("num_tokens", "num_samples", "skipped_batches", "reduction", "input"):
        assert one.summary[key] == two.summary[key], key
    assert two.summary["layers"] == pytest.approx(one.summary["layers"], rel=RELATIVE)
    assert two.summary["processes"] == 2 and "fsdp" not in one.summary


def test_a_nan_on_one_rank_skips_the_batch_on_all(importance_runs):
    one, two = (load_artifact(folder / "text.safetensors") for folder in importance_runs)
    assert one.summary["skipped_batches"] == two.summary["skipped_batches"] == 1
    assert one.summary["num_samples"] == 7  # 9 records in batches of 2; batch 1 (2 records) dropped


def test_each_rank_accumulates_half_of_the_elements(importance_runs):
    summary = load_artifact(importance_runs[1] / "text.safetensors").summary
    fsdp = summary["fsdp"]
    assert fsdp["version"] == 2 and fsdp["unit_classes"] == ["LlamaDecoderLayer", "WhisperEncoderLayer"]
    assert fsdp["units"] == 4 + 2  # one per decoder layer + one per encoder layer
    shares = [rank["accumulator_elements"] / summary["num_parameters"] for rank in fsdp["ranks"]]
    assert len(shares) == 2 and sum(shares) == pytest.approx(1.0)
    assert all(0.45 <= share <= 0.55 for share in shares), shares
    assert all(rank["peak_rss"] > 0 for rank in fsdp["ranks"])


# --- training: two FSDP processes vs one ----------------------------------------------------------------


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory, tiny_model_dir):
    """(one-process Layer-LR folder, root of the two-process runs: layer_lr, resumed, lora)."""
    from trainers.run import main

    root = tmp_path_factory.mktemp("fsdp-training")
    data = write_records(root / "data", count=8)
    importance = str(tiny_importance(tiny_model_dir, root))
    launch("train", str(root / "two"), str(tiny_model_dir), str(data), importance)
    main(fsdp_driver.train_runs(root / "one", str(tiny_model_dir), str(data), importance)["layer_lr"])  # one process
    for argv in fsdp_driver.constrained_runs(root / "one", str(tiny_model_dir), str(data), importance, batch=4).values():
        main(argv)  # the two processes' global batch in one
    return root / "one" / "layer_lr", root / "two"


def checkpoint_groups(checkpoint: Path) -> list[dict]:
    """Group name, lr, initial_lr and weight decay from a checkpoint's optimizer file (DDP/one process:
    optimizer.pt; FSDP FULL_STATE_DICT: optimizer.bin)."""
    file = checkpoint / "optimizer.pt" if (checkpoint / "optimizer.pt").is_file() else checkpoint / "optimizer.bin"
    state = torch.load(file, map_location="cpu", weights_only=False)
    return [{key: group[key] for key in ("name", "lr", "initial_lr", "weight_decay")} for group in state["param_groups"]]


def rank_reports(folder: Path) -> list[dict]:
    return [json.loads((folder / f"fsdp-rank{rank}.json").read_text()) for rank in (0, 1)]


def test_layer_lr_json_and_group_rates_match_one_process(training_runs):
    one, two = training_runs
    assert json.loads((two / "layer_lr" / "layer_lr.json").read_text()) == json.loads((one / "layer_lr.json").read_text())
    sharded, single = checkpoint_groups(two / "layer_lr" / "checkpoint-2"), checkpoint_groups(one / "checkpoint-2")
    assert [g["name"] for g in sharded] == [g["name"] for g in single]
    for a, b in zip(sharded, single):
        for key in ("lr", "initial_lr", "weight_decay"):
            assert a[key] == pytest.approx(b[key]), (a["name"], key)


def test_groups_hold_each_decoder_layers_shards_after_wrapping(training_runs):
    _, two = training_runs
    coefficients = json.loads((two / "layer_lr" / "layer_lr.json").read_text())["coefficients"]
    base = json.loads((two / "layer_lr" / "layer_lr.json").read_text())["base_lr"]
    for report in rank_reports(two / "layer_lr"):
        assert report["world_size"] == 2
        units = report["units"]
        assert sorted(name for name, cls in units.items() if "LlamaDecoderLayer" in cls) == [
            f"language_model.model.layers.{layer}" for layer in range(len(coefficients))]  # wrap per decoder layer
        groups = {group["name"]: group for group in report["groups"]}
        for layer, c in enumerate(coefficients):
            for kind in ("decay", "no_decay"):
                group = groups[f"layer{layer}.{kind}"]
                assert group["initial_lr"] == pytest.approx(c * base)
                assert all(name.startswith(f"language_model.model.layers.{layer}.") for name in group["params"])
                assert all(group["sharded"]) and group["local_elements"] < group["elements"]
        assert all(all(group["sharded"]) for group in report["groups"])  # the optimizer steps DTensor shards
    # The two ranks' shards of every group add up to the group.
    first, second = rank_reports(two / "layer_lr")
    for a, b in zip(first["groups"], second["groups"]):
        assert a["local_elements"] + b["local_elements"] == a["elements"]


def test_fsdp_checkpoint_resumes_the_same_run(training_runs):
    _, two = training_runs

    def losses(folder: Path) -> dict[int, float]:
        state = json.loads((folder / "trainer_state.json").read_text())
        return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}

    reference, resumed = losses(two / "layer_lr"), losses(two / "resumed")
    assert sorted(reference) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-4), step
    assert checkpoint_groups(two / "resumed" / "checkpoint-4") == checkpoint_groups(two / "layer_lr" / "checkpoint-4")


def test_fsdp_exports_load_with_the_auto_classes(training_runs, tiny_model_dir):
    from transformers import AutoModel, AutoModelForCausalLM

    _, two = training_runs
    final = two / "layer_lr" / "final"
    assert not any(final.glob("_fsdp*.py"))  # the model's remote code, not FSDP's wrapper sources
    assert json.loads((final / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
        "modeling_speech_llama.SpeechLlamaForCausalLM"
    trained = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, trust_remote_code=True).state_dict()
    changed = {name.split(".")[0] for name in base if not torch.equal(trained[name], base[name])}
    assert changed == {"adaptor", "language_model"}  # the encoder stays frozen

    adapter = two / "lora" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    adapted = AutoModel.from_pretrained(adapter, trust_remote_code=True).eval()
    merged = AutoModelForCausalLM.from_pretrained(two / "lora" / "final", trust_remote_code=True).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)
    lora = [name for name in adapted.state_dict() if "lora_B" in name]
    assert lora and any(adapted.state_dict()[name].abs().sum() > 0 for name in lora)  # LoRA B moved from zero


@pytest.mark.parametrize("method", ["region_freeze", "importance_anchor"])
def test_constrained_methods_under_fsdp_equal_one_process(training_runs, tiny_model_dir, method):
    """Two processes × batch 2 end where one process × batch 4 does: the same losses and gradient norms
    (the constraint's edit is measured by clipping in both: the anchor's pull makes step 2's norm ~3000),
    weights within a tenth of one step's update (lr 1e-3; AdamW magnifies the reduction order's rounding
    for entries with tiny gradients); region_freeze's region bit-identical to the base."""
    one, two = training_runs[0].parent / method, training_runs[1] / method

    def logged(folder: Path) -> list[tuple[float, float]]:
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return [(entry["loss"], entry["grad_norm"]) for entry in history if "loss" in entry]

    for (loss, norm), (loss_two, norm_two) in zip(logged(one), logged(two), strict=True):
        assert loss == pytest.approx(loss_two, rel=1e-5) and norm == pytest.approx(norm_two, rel=1e-4)
    single, sharded, base = weights(one / "final"), weights(two / "final"), weights(tiny_model_dir)
    assert set(single) <= set(sharded)  # the gathered state dict also lists the tied lm_head
    for name in single:
        assert torch.allclose(single[name], sharded[name], rtol=0, atol=1e-4), name
    if method == "region_freeze":
        importance = next((training_runs[0].parents[1]).glob("text.safetensors"))
        for name, index in region_indices(importance, 0.05).items():
            assert torch.equal(sharded[name].reshape(-1)[index], base[name].reshape(-1)[index]), name
