"""Trainers, in-process: Eq. 3 schemes, parameter groups, schedules, arguments, data, LoRA setup.

The multi-process runs (`accelerate launch`, kill + resume, exports) are in test_trainers_launch.py.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from helpers import noise_clip

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `trainers` is importable from the repo root (an older editable install may not map it)
    sys.path.insert(0, str(REPO))

from transformers import TrainingArguments  # noqa: E402

from speech_llama.generate import load_model  # noqa: E402
from trainers.arguments import ArgumentsError, parse_args  # noqa: E402
from trainers.data import MixedQACollator, load_split  # noqa: E402
from trainers.layer_lr import (  # noqa: E402
    LayerLRError,
    build_param_groups,
    decoder_layer_index,
    layer_coefficients,
    layer_lr_spec,
    read_layer_importance,
)
from trainers.lora import apply_lora, lora_config  # noqa: E402
from trainers.trainer import DeepSpeedOptimizerError, SpeechLlamaTrainer, refuse_deepspeed_optimizer  # noqa: E402

IMPORTANCE = [4.0, 1.0, 2.5, 3.0]


def write_summary(path: Path, layers: list[float]) -> Path:
    path.write_text(json.dumps({"model": "tiny", "input": "text", "layers": layers, "modules": {}}))
    return path


def write_records(folder: Path, count: int = 6, corrupt_row: int | None = None) -> Path:
    """JSONL with relative wav paths (noise clips); `corrupt_row` gets a file that is not audio."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    with (folder / "data.jsonl").open("w") as lines:
        for i in range(count):
            wav = folder / "audio" / f"{i}.wav"
            if i == corrupt_row:
                wav.write_bytes(b"not a wav file")
            else:
                soundfile.write(wav, noise_clip(0.5 + 0.1 * i, seed=i), 16000)
            lines.write(json.dumps({"question": f"Question {i}?", "answers": [f"answer {i}"], "audio": f"audio/{i}.wav"}) + "\n")
    return folder / "data.jsonl"


def spoken_rows(folder: Path, count: int = 6) -> list[dict]:
    """`write_records` loaded through `load_split`, as a list of record dicts (with `_row`)."""
    records = load_split(str(write_records(folder, count=count)), "train", None, require_audio=True)
    return [records[i] for i in range(len(records))]


def training_args(tmp_path: Path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(tmp_path / "out"), learning_rate=1e-3, weight_decay=0.1, use_cpu=True,
                  report_to="none", lr_scheduler_type="cosine", warmup_steps=0.2, remove_unused_columns=False)
    return TrainingArguments(**{**values, **overrides})


# --- Eq. 3 ------------------------------------------------------------------------------------------


def test_minmax_is_the_default_reading_of_eq3():
    c = layer_coefficients(IMPORTANCE, alpha=0.4)
    # c_l = 1 − α (I_l − min) / (max − min): most important layer (I=4) learns slowest.
    assert c == pytest.approx([0.6, 1.0, 1 - 0.4 * 1.5 / 3, 1 - 0.4 * 2 / 3])
    assert layer_coefficients([2.0, 2.0], alpha=0.4) == [1.0, 1.0]


def test_power_and_softmax_schemes():
    power = layer_coefficients(IMPORTANCE, alpha=0.5, scheme="power")
    assert power == pytest.approx([(i / 1.0) ** -0.5 for i in IMPORTANCE])
    softmax = layer_coefficients(IMPORTANCE, alpha=0.4, scheme="softmax")
    values = np.array(IMPORTANCE)
    z = (values - values.mean()) / values.std()
    expected = len(values) * np.exp(-0.4 * z) / np.exp(-0.4 * z).sum()
    assert softmax == pytest.approx(expected.tolist())
    assert sum(softmax) == pytest.approx(len(IMPORTANCE))
    assert softmax.index(min(softmax)) == IMPORTANCE.index(max(IMPORTANCE))


@pytest.mark.parametrize(
    ("layers", "alpha", "scheme", "message"),
    [
        (IMPORTANCE, 1.0, "minmax", "alpha < 1"),
        ([0.0, 1.0], 0.4, "power", "must be > 0"),
        (IMPORTANCE, 0.4, "linear", "unknown layer_lr_scheme"),
        (IMPORTANCE, -0.1, "softmax", ">= 0"),
    ],
)
def test_bad_eq3_settings_are_refused(layers, alpha, scheme, message):
    with pytest.raises(LayerLRError, match=message):
        layer_coefficients(layers, alpha, scheme)


def test_importance_summary_is_checked(tmp_path):
    summary = write_summary(tmp_path / "X.json", IMPORTANCE)
    assert read_layer_importance(summary, 4) == IMPORTANCE
    with pytest.raises(LayerLRError, match=r"has 4 layers but the model's LLM has 30 decoder layers"):
        read_layer_importance(summary, 30)
    with pytest.raises(LayerLRError, match="no such file"):
        read_layer_importance(tmp_path / "missing.json", 4)
    (tmp_path / "bad.json").write_text(json.dumps({"modules": {}}))
    with pytest.raises(LayerLRError, match="expected a 'layers' list"):
        read_layer_importance(tmp_path / "bad.json", 4)
    with pytest.raises(LayerLRError, match=r"layers\[1\]"):
        read_layer_importance(write_summary(tmp_path / "nan.json", [1.0, float("nan")]), 2)


def test_decoder_layer_index_sees_through_wrappers():
    assert decoder_layer_index("language_model.model.layers.12.mlp.up_proj.weight") == 12
    assert decoder_layer_index("base_model.model.language_model.model.layers.3.self_attn.q_proj.lora_A.default.weight") == 3
    assert decoder_layer_index("language_model._fsdp_wrapped_module.model.layers.7._fsdp_wrapped_module.mlp.up_proj.weight") == 7
    assert decoder_layer_index("encoder.layers.1.fc1.weight") is None
    assert decoder_layer_index("language_model.model.embed_tokens.weight") is None


# --- optimizer groups -----------------------------------------------------------------------------


def layer_lr_trainer(tmp_path, model, **overrides):
    args = training_args(tmp_path, **overrides)
    spec = layer_lr_spec(write_summary(tmp_path / "X.json", IMPORTANCE), 4, 0.4, "minmax", args.learning_rate)
    return SpeechLlamaTrainer(model=model, args=args, layer_lr=spec, adaptor_lr=5e-3), spec


def test_layer_lr_groups_follow_eq3(tiny, tmp_path):
    model, _ = tiny
    trainer, spec = layer_lr_trainer(tmp_path, model)
    optimizer = trainer.create_optimizer()
    groups = {g["name"]: g for g in optimizer.param_groups}
    for layer, c in enumerate(spec.coefficients):
        for kind in ("decay", "no_decay"):
            assert groups[f"layer{layer}.{kind}"]["lr"] == pytest.approx(c * 1e-3)
        assert groups[f"layer{layer}.no_decay"]["weight_decay"] == 0.0
        assert groups[f"layer{layer}.decay"]["weight_decay"] == 0.1
    assert groups["adaptor.decay"]["lr"] == pytest.approx(5e-3)
    assert groups["other.decay"]["lr"] == pytest.approx(1e-3)
    # Every trainable parameter exactly once; the frozen encoder never.
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert not any(id(p) in set(grouped) for p in model.encoder.parameters())
    on_disk = json.loads((tmp_path / "out" / "layer_lr.json").read_text())
    assert on_disk["scheme"] == "minmax" and on_disk["alpha"] == 0.4 and on_disk["base_lr"] == 1e-3
    assert on_disk["coefficients"] == pytest.approx(spec.coefficients)


@pytest.mark.parametrize("scheduler", ["cosine", "linear"])
def test_group_ratios_survive_warmup_and_decay(tiny, tmp_path, scheduler):
    model, _ = tiny
    trainer, spec = layer_lr_trainer(tmp_path, model, lr_scheduler_type=scheduler)
    optimizer = trainer.create_optimizer()
    schedule = trainer.create_scheduler(num_training_steps=20, optimizer=optimizer)
    coefficient = {f"layer{l}.{kind}": c for l, c in enumerate(spec.coefficients) for kind in ("decay", "no_decay")}
    for group in optimizer.param_groups:  # LambdaLR keeps each group's own starting rate
        assert group["initial_lr"] == pytest.approx(coefficient.get(group["name"], 5.0 if "adaptor" in group["name"] else 1.0) * 1e-3)
    factors = []
    for step in range(1, 20):
        optimizer.step()  # no gradients: a no-op update that keeps torch's step-order check quiet
        schedule.step()
        factor = schedule.lr_lambdas[0](step)  # the schedule's own λ(step), the same for every group
        factors.append(factor)
        assert trainer._get_learning_rate() == pytest.approx(1e-3 * factor)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(group["initial_lr"] * factor, rel=1e-12, abs=1e-18), (step, group["name"])
            if group["name"] in coefficient and factor > 0:
                assert group["lr"] / trainer._get_learning_rate() == pytest.approx(coefficient[group["name"]])
    # The checks covered warmup (rising), the peak and the decay.
    assert factors[0] < factors[2] and max(factors) == pytest.approx(1.0) and factors[-1] < 0.1


def test_deepspeed_optimizer_block_is_refused(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(DeepSpeedOptimizerError, match="silently drop the per-group rates that Layer-LR needs"):
        refuse_deepspeed_optimizer(str(ds), "Layer-LR")
    refuse_deepspeed_optimizer({"zero_optimization": {"stage": 2}}, "Layer-LR")  # no optimizer block: fine
    summary = write_summary(tmp_path / "X.json", IMPORTANCE)
    with pytest.raises(DeepSpeedOptimizerError):
        parse_args(["--model_name_or_path", "m", "--train_data", "d.jsonl", "--method", "layer_lr",
                    "--importance", str(summary), "--deepspeed", str(ds)])


# --- arguments ------------------------------------------------------------------------------------


def test_yaml_with_cli_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model_name_or_path: m\ntrain_data: d.jsonl\nmethod: lora\nlearning_rate: 2e-5\n"
                      "lora_r: 8\nbf16: false\nreport_to: none\nmax_steps: 5\n")
    model_args, data_args, args = parse_args([str(config), "--max_steps", "7", "--lora_dropout", "0.1",
                                              "--output_dir", str(tmp_path / "o")])
    assert args.learning_rate == 2e-5 and args.max_steps == 7  # YAML "2e-5" is read as a float; CLI wins
    assert model_args.method == "lora" and model_args.lora_r == 8 and model_args.lora_alpha == 16
    assert model_args.lora_dropout == 0.1 and data_args.input == "speech" and data_args.mix_text_ratio == 0
    assert args.remove_unused_columns is False  # the collator needs the raw columns


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "sgd"], "unknown method 'sgd'"),
        (["--method", "layer_lr"], "needs importance"),
        (["--layer_lr_scheme", "cubic"], "unknown layer_lr_scheme"),
        (["--mix_text_ratio", "1.5"], "mix_text_ratio"),
        (["--transcript_ratio", "-0.1"], "transcript_ratio"),
        (["--no_such_flag", "1"], "unknown command-line arguments"),
    ],
)
def test_bad_arguments_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--model_name_or_path", "m", "--train_data", "d.jsonl", *argv])


def test_unknown_yaml_key_is_an_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model_name_or_path: m\ntrain_data: d.jsonl\nlayer_lr_alfa: 0.3\n")
    with pytest.raises(ArgumentsError, match="layer_lr_alfa"):
        parse_args([str(config)])


# --- data -----------------------------------------------------------------------------------------


def test_mixed_collator_builds_one_batch_of_text_and_speech_rows(tiny, tmp_path):
    model, processor = tiny
    rows = spoken_rows(tmp_path)
    collator = MixedQACollator(processor, input="speech", mix_text_ratio=0.5, seed=3)
    as_text = [collator.as_text(r) for r in rows]
    assert any(as_text) and not all(as_text)
    batch = collator(rows)
    placeholders = (batch["input_ids"] == processor.speech_token_id).sum(-1)
    assert [bool(n == 0) for n in placeholders.tolist()] == as_text
    assert batch["input_features"].shape[0] == as_text.count(False)
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss)
    # Seeded: the same choice again; another epoch draws again.
    assert [MixedQACollator(processor, "speech", mix_text_ratio=0.5, seed=3).as_text(r) for r in rows] == as_text
    draws = {tuple(MixedQACollator(processor, "speech", mix_text_ratio=0.5, seed=3, epoch=e).as_text(r) for r in rows) for e in range(6)}
    assert len(draws) > 1


def test_transcript_rows_repeat_the_question_and_answer_rows_keep_the_answer(tiny, tmp_path):
    _, processor = tiny
    rows = spoken_rows(tmp_path)
    collator = MixedQACollator(processor, input="speech", transcript_ratio=0.5, seed=1)
    transcript = [collator.transcript_task(r) for r in rows]
    assert any(transcript) and not all(transcript)
    batch = collator(rows)
    tokenizer = processor.tokenizer
    for row, record in enumerate(rows):
        prompt = tokenizer.decode(batch["input_ids"][row][batch["labels"][row] == -100], skip_special_tokens=True)
        completion = tokenizer.decode(batch["labels"][row][batch["labels"][row] != -100], skip_special_tokens=True)
        expected = record["question"] if transcript[row] else record["answers"][0]
        assert completion.strip() == expected
        assert ("Repeat exactly what was said." in prompt) == transcript[row]
    # Text rows never get the transcript task: repeating a typed question teaches nothing.
    all_text = MixedQACollator(processor, input="speech", mix_text_ratio=1.0, transcript_ratio=1.0)
    assert not any(all_text.transcript_task(r) for r in rows)
    with pytest.raises(ValueError, match="transcript_ratio"):
        MixedQACollator(processor, input="speech", transcript_ratio=1.5)


def test_unreadable_audio_names_file_row_and_column(tiny, tmp_path):
    _, processor = tiny
    source = str(write_records(tmp_path, corrupt_row=2))
    records = load_split(source, "train", None, require_audio=True)
    collator = MixedQACollator(processor, input="speech", source=source)
    with pytest.raises(ValueError) as error:
        collator([records[i] for i in range(len(records))])
    message = str(error.value)
    assert source in message and "row 3" in message and "column 'audio'" in message and "2.wav" in message


def test_missing_columns_and_audio_are_named(tmp_path):
    (tmp_path / "no_answers.jsonl").write_text(json.dumps({"question": "Q?"}) + "\n")
    with pytest.raises(ValueError, match="no_answers.jsonl"):
        load_split(str(tmp_path / "no_answers.jsonl"), "train", None, require_audio=False)
    (tmp_path / "missing.jsonl").write_text(json.dumps({"question": "Q?", "answers": ["a"], "audio": "nope.wav"}) + "\n")
    with pytest.raises(ValueError, match=r"missing.jsonl, line 1, column 'audio'"):
        load_split(str(tmp_path / "missing.jsonl"), "train", None, require_audio=True)


# --- LoRA -----------------------------------------------------------------------------------------


def test_lora_trains_adapters_and_adaptor_only(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    peft_model = apply_lora(model, lora_config(r=4))
    config = peft_model.peft_config["default"]
    assert config.lora_alpha == 8 and config.lora_dropout == 0.05 and config.r == 4
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all(".lora_" in n or ".adaptor.modules_to_save." in n for n in trainable)
    targeted = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_A." in n}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any(".encoder." in n for n in trainable)
    lora_layers = {decoder_layer_index(n) for n in trainable if ".lora_A." in n}
    assert lora_layers == set(range(model.config.text_config.num_hidden_layers))


def test_run_refuses_a_folder_that_is_not_speech_llama(tmp_path, tiny_model_dir):
    from trainers.run import speech_llama_config

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="is not a SpeechLlama model"):
        speech_llama_config(str(tmp_path))
    assert speech_llama_config(str(tiny_model_dir)).text_config.num_hidden_layers == 4


def test_mixed_precision_keeps_trainable_weights_in_fp32(tiny_model_dir):
    from trainers.run import upcast_trainable

    model, _ = load_model(tiny_model_dir, dtype=torch.bfloat16)
    peft_model = apply_lora(model, lora_config(r=4))
    assert upcast_trainable(peft_model) > 0
    assert all(p.dtype == torch.float32 for p in peft_model.parameters() if p.requires_grad)
    assert all(p.dtype == torch.bfloat16 for p in model.encoder.parameters())


def test_groups_without_layer_lr_keep_one_rate(tiny):
    model, _ = tiny
    groups = build_param_groups(model.named_parameters(), [], base_lr=2e-5, weight_decay=0.0)
    assert {g["name"] for g in groups} == {"adaptor.no_decay", "other.no_decay"}
    assert all(g["lr"] == 2e-5 for g in groups)
    assert math.isclose(sum(p.numel() for g in groups for p in g["params"]),
                        sum(p.numel() for p in model.parameters() if p.requires_grad))


# --- shipped configs ------------------------------------------------------------------------------

CONFIG_DIR = REPO / "trainers" / "configs"
STAGE1_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*/*.yaml") if p.parent.name not in ("accelerate", "tiny-random"))


def launched_processes(config: Path) -> int:
    """GPUs/processes a config's header launches it with (its accelerate config's num_processes, else 1)."""
    import re

    import yaml

    match = re.search(r"--config_file (\S+)", config.read_text())
    return yaml.safe_load((REPO / match.group(1)).read_text())["num_processes"] if match else 1


@pytest.mark.parametrize("config", STAGE1_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_stage1_configs_carry_llama_omni_defaults(config):
    from trainers.arguments import DATACLASSES, coerce_types, read_config
    from transformers import HfArgumentParser

    values = coerce_types(read_config(config), HfArgumentParser(DATACLASSES))
    assert values["method"] == config.stem
    assert values["learning_rate"] == 2e-5 and getattr(values["lr_scheduler_type"], "value", values["lr_scheduler_type"]) == "cosine"
    assert values["warmup_steps"] == 0.03 and values["num_train_epochs"] == 3
    assert not values.get("fp16")
    gpu = config.parent.name.startswith("llama")
    assert values["bf16"] is gpu and values.get("use_cpu", False) is not gpu
    effective = values["per_device_train_batch_size"] * values["gradient_accumulation_steps"] * launched_processes(config)
    assert effective == 32
    assert "activation_checkpointing" in values
    if config.stem == "lora":
        assert (values["lora_r"], values["lora_alpha"], values["lora_dropout"]) == (16, 32, 0.05)
    if config.stem == "layer_lr":
        assert values["importance"].endswith(".json") and values["layer_lr_alpha"] == 0.4
    if config.stem == "region_freeze":
        assert values["importance"].endswith(".safetensors") and values["region_fraction"] == 0.01
    if config.stem == "importance_anchor":
        assert values["importance"].endswith(".safetensors") and values["anchor_lambda"] == 1.0


# --- alignment (method adaptor) -------------------------------------------------------------------


def test_ctc_alignment_trains_only_the_adaptor_and_lowers_its_loss(tmp_path, tiny_model_dir):
    from alignment.ctc import TranscriptCTCCollator, ctc_alignment_loss
    from trainers.run import main

    rows = spoken_rows(tmp_path / "data", count=4)
    model, processor = load_model(tiny_model_dir)
    batch = TranscriptCTCCollator(processor)(rows)
    assert batch["ctc_targets"].shape[0] == 4 and batch["ctc_target_lengths"].tolist() == [
        len(processor.tokenizer(f"Question {i}?", add_special_tokens=False)["input_ids"]) for i in range(4)]
    loss = ctc_alignment_loss(model, **batch)
    assert torch.isfinite(loss) and loss > 0

    before = {name: p.clone() for name, p in model.named_parameters()}
    summary = main([
        "--model_name_or_path", str(tiny_model_dir), "--train_data", str(tmp_path / "data" / "data.jsonl"),
        "--method", "adaptor", "--alignment_loss", "ctc", "--output_dir", str(tmp_path / "out"), "--max_steps", "8",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true",
    ])
    losses = [e["loss"] for e in json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
    trained, _ = load_model(summary["final_dir"] if "final_dir" in summary else tmp_path / "out" / "final")
    changed = {name for name, p in trained.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("adaptor.") for name in changed)


def test_ctc_alignment_needs_method_adaptor():
    with pytest.raises(ValueError, match="needs method adaptor"):
        parse_args(["--model_name_or_path", "m", "--train_data", "d.jsonl", "--alignment_loss", "ctc"])
    with pytest.raises(ValueError, match="unknown alignment_loss"):
        parse_args(["--model_name_or_path", "m", "--train_data", "d.jsonl", "--method", "adaptor", "--alignment_loss", "mse"])
