"""Hostile but fair input and interrupted work: no folder code runs without consent,
interrupted runs resume from complete state, bad rows are named before any work, integer PCM is
scaled, non-finite coefficients or weights stop a run, and every CLI error is one line (status 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers import noise_clip

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from apps import cli  # noqa: E402

MARKER_MODULE = '''
from pathlib import Path
Path({marker!r}).write_text("imported")
from transformers import TokenizersBackend, WhisperFeatureExtractor


class MarkerTokenizer(TokenizersBackend):
    pass


class MarkerFeatureExtractor(WhisperFeatureExtractor):
    pass
'''


def hostile_folder(tiny_model_dir: Path, tmp_path: Path, code_only: bool = False) -> tuple[Path, Path]:
    """A copy of the tiny model whose tokenizer and feature-extractor configs point (auto_map) at a
    module in the folder that writes a marker file when imported. `code_only`: the tokenizer class
    exists only there (no transformers class of that name)."""
    folder = tmp_path / "hostile-model"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "IMPORTED"
    (folder / "marker_code.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"]["AutoTokenizer"] = ["marker_code.MarkerTokenizer", None]
    if code_only:
        tokenizer_config["tokenizer_class"] = "MarkerTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    processor_config = json.loads((folder / "processor_config.json").read_text())
    processor_config["feature_extractor"]["auto_map"]["AutoFeatureExtractor"] = "marker_code.MarkerFeatureExtractor"
    (folder / "processor_config.json").write_text(json.dumps(processor_config))
    return folder, marker


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """`speech-llama …` in this process → (exit status, stderr)."""
    status = cli.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- 1. consent for a folder's own code -------------------------------------------------------

def test_own_folders_carry_no_foreign_code(tiny_model_dir):
    from speech_llama.remote_code import foreign_code

    assert foreign_code(tiny_model_dir) == []


def test_folder_code_is_not_imported_without_consent(tiny_model_dir, tmp_path, caplog):
    from speech_llama.generate import generate_answers, load_model
    from speech_llama.remote_code import foreign_code
    from trainers.arguments import ModelArguments
    from trainers.run import load_for_training

    folder, marker = hostile_folder(tiny_model_dir, tmp_path)
    assert len(foreign_code(folder)) == 2
    with caplog.at_level("WARNING", logger="speech_llama"):
        model, processor = load_model(folder)  # what eval, importance, deactivate, generate and the Space use
    assert "marker_code.MarkerTokenizer" in caplog.text and "--trust-remote-code" in caplog.text
    assert type(processor.tokenizer).__name__ == "TokenizersBackend"
    assert type(processor.feature_extractor).__name__ == "WhisperFeatureExtractor"
    generate_answers(model, processor, ["Hi?"], max_new_tokens=2)
    load_for_training(ModelArguments(model_name_or_path=str(folder)))  # trainers/run.py
    assert not marker.exists()


def test_code_only_folder_needs_the_flag_and_the_flag_runs_it(tiny_model_dir, tmp_path, capsys):
    folder, marker = hostile_folder(tiny_model_dir, tmp_path, code_only=True)
    status, err = run_cli(["generate", "--model", folder, "--question", "Hi?", "--max-new-tokens", "2"], capsys)
    assert_one_line_error(status, err, "--trust-remote-code", "marker_code.MarkerTokenizer")
    status, err = run_cli(["deactivate", "--model", folder, "--importance", tmp_path / "x.safetensors",
                           "--data", "data/demo_qa.jsonl", "--out", tmp_path / "r.json"], capsys)
    assert status == 2 and not marker.exists()
    # With consent the folder's tokenizer code runs (in a child process: its own modules cache).
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "apps.cli", "generate", "--model", str(folder), "--question", "Hi?",
                           "--max-new-tokens", "2", "--trust-remote-code"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.read_text() == "imported"


# --- 3. bad clips are named (file, line, column) before any work ------------------------------

def write_clips(folder: Path, seconds: list[float]) -> Path:
    """data.jsonl with one 16 kHz noise clip per line, of the given lengths."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, length in enumerate(seconds):
        soundfile.write(folder / "audio" / f"{i}.wav", noise_clip(length, seed=i), 16000)
        lines.append(json.dumps({"question": f"Question {i}?", "answers": [f"answer {i}"], "audio": f"audio/{i}.wav"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"


@pytest.mark.parametrize("bad_line, seconds, message", [(1, 40.0, "40.0 s long"), (4, 0.05, "50 ms long")])
def test_eval_names_a_bad_clip_before_generating(tiny_model_dir, tmp_path, capsys, monkeypatch, bad_line, seconds, message):
    import speech_llama.evaluation as evaluation

    lengths = [0.5] * 7
    lengths[bad_line - 1] = seconds
    data = write_clips(tmp_path, lengths)
    monkeypatch.setattr(evaluation, "run_predictions", lambda *a, **k: pytest.fail("generation started"))
    for task in ("s2t", "cascade"):
        status, err = run_cli(["eval", "--model", tiny_model_dir, "--data", data, "--task", task,
                               "--out", tmp_path / "out"], capsys)
        assert_one_line_error(status, err, f"data.jsonl, line {bad_line}, column 'audio'", message)
    assert not (tmp_path / "out").exists()


def test_training_names_a_too_short_clip_before_training(tiny_model_dir, tmp_path, capsys):
    data = write_clips(tmp_path, [0.5, 0.5, 0.04, 0.5])
    status, err = run_cli(["train", "trainers/configs/tiny-random/full.yaml", "--model_name_or_path", tiny_model_dir,
                           "--train_data", data, "--output_dir", tmp_path / "run", "--max_steps", "1"], capsys)
    assert_one_line_error(status, err, "data.jsonl, line 3, column 'audio'", "40 ms long")
    assert not (tmp_path / "run").exists()


# --- 4. integer PCM ---------------------------------------------------------------------------

def test_int16_audio_gives_the_features_of_float_audio(tiny, tmp_path):
    from speech_llama.audio import read_audio

    _, processor = tiny
    pcm = (noise_clip(1.0) * 20000).clip(-32768, 32767).astype(np.int16)  # as scipy.io.wavfile.read returns it
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, pcm, 16000, subtype="PCM_16")
    as_float = read_audio(str(wav), where="clip.wav")  # soundfile's float reading of the same file
    np.testing.assert_array_equal(read_audio({"array": pcm, "sampling_rate": 16000}, where="x"), as_float)
    features = {name: processor(text=["<speech>"], audio=[clip], sampling_rate=16000)["input_features"]
                for name, clip in (("int16", pcm), ("float", as_float), ("int32", pcm.astype(np.int32) << 16))}
    for name in ("int16", "int32"):
        np.testing.assert_allclose(features[name].numpy(), features["float"].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="int64 has no known PCM scale"):
        processor(text=["<speech>"], audio=[pcm.astype(np.int64)], sampling_rate=16000)


# --- 2. resume skips a half-written checkpoint ------------------------------------------------

FULL_YAML = str(REPO / "trainers" / "configs" / "tiny-random" / "full.yaml")


def test_resume_skips_a_half_written_checkpoint(tiny_model_dir, tmp_path, capsys):
    from trainers.checkpoints import incomplete_reason
    from trainers.run import main as train

    data = write_clips(tmp_path / "data", [0.5, 0.6, 0.7, 0.8])
    out = tmp_path / "run"
    common = [FULL_YAML, "--model_name_or_path", str(tiny_model_dir), "--train_data", str(data), "--output_dir", str(out)]
    train([*common, "--max_steps", "3"])
    # Killed while checkpoint-6 was being written: only the config and the remote-code files are there.
    half = out / "checkpoint-6"
    half.mkdir()
    for path in (out / "checkpoint-3").iterdir():
        if path.name == "config.json" or path.suffix == ".py":
            shutil.copy(path, half / path.name)
    assert incomplete_reason(half) == "no trainer_state.json (written last)"
    status, err = run_cli(["train", *common, "--max_steps", "6", "--resume_from_checkpoint", half], capsys)
    assert_one_line_error(status, err, "checkpoint-6: incomplete checkpoint", "--resume_from_checkpoint true")
    summary = train([*common, "--max_steps", "6", "--resume_from_checkpoint", "true"])
    assert summary["resumed_from"] == str(out / "checkpoint-3") and summary["global_step"] == 6
    assert incomplete_reason(half) is None  # rewritten whole at step 6


# --- 5. no NaN coefficients, no NaN export ----------------------------------------------------

@pytest.mark.parametrize("layers, alpha, scheme", [([1.0, 2.0, 3.0], 1e6, "softmax"), ([1e-300, 1e300], 2.0, "power")])
def test_layer_lr_coefficients_must_be_finite_and_positive(layers, alpha, scheme):
    from trainers.layer_lr import LayerLRError, layer_coefficients

    with pytest.raises(LayerLRError, match="not finite numbers > 0"):
        layer_coefficients(layers, alpha, scheme)


def test_softmax_on_huge_importance_sums_stays_finite():
    from trainers.layer_lr import layer_coefficients

    coefficients = layer_coefficients([1e308, 1e308, 0.0, 0.0], 0.4, "softmax")  # NaN before: the mean overflowed
    assert all(np.isfinite(coefficients)) and sum(coefficients) == pytest.approx(4.0)
    assert coefficients[0] < 1 < coefficients[2]


def test_non_finite_weights_are_not_exported(tiny_model_dir, tmp_path, capsys):
    data = write_clips(tmp_path / "data", [0.5, 0.6])
    out = tmp_path / "run"
    status, err = run_cli(["train", FULL_YAML, "--model_name_or_path", tiny_model_dir, "--train_data", data,
                           "--output_dir", out, "--max_steps", "1", "--save_strategy", "no",
                           "--learning_rate", "1e39", "--lr_scheduler_type", "constant", "--warmup_steps", "0"],
                          capsys)  # one AdamW step overflows fp32
    assert_one_line_error(status, err, "non-finite", "nothing exported")
    assert not (out / "final").exists() and not (out / ".final.partial").exists()


# --- importance artifacts: garbage, truncated, a layer cut out --------------------------------

def tiny_artifact(tiny, path: Path, drop_layer: int | None = None) -> Path:
    """A synthetic importance artifact over the tiny model's decoder layers (summary from every
    layer; with `drop_layer`, that layer's tensors are then cut out of the .safetensors)."""
    import torch
    from safetensors.torch import save_file

    from importance.artifact import build_summary, save_artifact

    model, _ = tiny
    generator = torch.Generator().manual_seed(0)
    importances = {name: torch.rand(p.shape, generator=generator) for name, p in model.named_parameters()
                   if ".model.layers." in name}
    summary = build_summary(importances, num_layers=model.config.text_config.num_hidden_layers, model="tiny",
                            input="text", num_samples=1, num_tokens=1, reduction="mean")
    save_artifact(path, importances, summary)
    if drop_layer is not None:
        save_file({n: t for n, t in importances.items() if f".layers.{drop_layer}." not in n}, str(path))
    return path


def test_an_artifact_missing_a_layer_is_refused_or_warned_about(tiny, tmp_path, capsys, tiny_model_dir, caplog):
    from importance.artifact import check_layer_coverage, load_artifact

    cut = tiny_artifact(tiny, tmp_path / "cut.safetensors", drop_layer=1)
    status, err = run_cli(["deactivate", "--model", tiny_model_dir, "--importance", cut, "--data", "data/demo_qa.jsonl",
                           "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(status, err, "decoder layer(s) [1]", "incomplete")
    artifact = load_artifact(cut)
    summary = {**artifact.summary, "layers": [x if i != 1 else 0.0 for i, x in enumerate(artifact.summary["layers"])]}
    with caplog.at_level("WARNING", logger="importance"):
        assert check_layer_coverage(artifact.shapes, tiny[0], summary, "cut") == [1]  # never analysed: a warning
    assert "never zeroed" in caplog.text


# --- every CLI error: one line, status 2 ------------------------------------------------------

def bad_input(case: str, tmp_path: Path, tiny, tiny_model_dir) -> list:
    """argv of a `speech-llama` command given one representative bad input."""
    garbage = tmp_path / "garbage.safetensors"
    if case in ("deactivate", "compare"):
        real = tiny_artifact(tiny, tmp_path / "real.safetensors")
        if case == "deactivate":  # not safetensors at all, next to a valid summary
            garbage.write_bytes(b"\x00garbage" * 64)
            shutil.copy(real.with_suffix(".json"), garbage.with_suffix(".json"))
        else:  # a real artifact cut short (a copy interrupted mid-file)
            garbage.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
            shutil.copy(real.with_suffix(".json"), garbage.with_suffix(".json"))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {
        "build": ["build", "--preset", "tiny-random", "--out", tmp_path / "m", "--dtype", "bfloat16"],
        "synthesize": ["synthesize", "--data", tmp_path / "missing.jsonl", "--out", tmp_path / "s"],
        "eval": ["eval", "--model", tmp_path / "no-model", "--data", "data/demo_qa.jsonl", "--task", "t2t", "--out", tmp_path / "e"],
        "importance": ["importance", "--model", tmp_path / "no-model", "--data", "data/demo_qa.jsonl", "--out", tmp_path / "i.safetensors"],
        "deactivate": ["deactivate", "--model", tiny_model_dir, "--importance", garbage, "--data", "data/demo_qa.jsonl",
                       "--out", tmp_path / "r.json"],
        "compare": ["compare", garbage, "--out", tmp_path / "c"],
        "reproduce": ["reproduce", "--out", a_file],
        "corpus": ["corpus", "--out", tmp_path / "corpus", "--clips", "0"],
        "train": ["train", FULL_YAML, "--model_name_or_path", tiny_model_dir, "--train_data", "data/demo_qa.jsonl",
                  "--method", "layer_lr", "--importance", garbage, "--output_dir", tmp_path / "t"],
    }[case]


EXPECTED = {
    "build": "fixes its adaptor and dtype; drop --dtype",
    "synthesize": "missing.jsonl",
    "eval": "no-model is not a model folder",
    "importance": "no-model is not a model folder",
    "deactivate": "not a readable safetensors file",
    "compare": "not a readable safetensors file",
    "reproduce": "is a file; pass a folder",
    "corpus": "--clips and --workers must be at least 1",
    "train": "pass its summary",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_every_cli_error_is_one_line_with_status_2(case, tmp_path, capsys, tiny, tiny_model_dir):
    status, err = run_cli(bad_input(case, tmp_path, tiny, tiny_model_dir), capsys)
    assert_one_line_error(status, err, f"speech-llama {case}: error:", EXPECTED[case])


def test_trainer_script_error_is_one_line(tmp_path, tiny_model_dir):
    done = subprocess.run([sys.executable, "trainers/run.py", FULL_YAML, "--model_name_or_path", str(tiny_model_dir),
                           "--train_data", "data/demo_qa.jsonl", "--method", "layer_lr",
                           "--importance", str(tmp_path / "X.safetensors"), "--output_dir", str(tmp_path / "t")],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert_one_line_error(done.returncode, done.stderr, "trainers/run.py: error:", "X.json")


def test_a_rejected_upload_is_deleted_at_once(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from spaces_demo.handlers import on_upload, reject_upload
    from spaces_demo.uploads import discard_upload

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / "3f2a" / "notes.txt"
    upload.parent.mkdir(parents=True)
    upload.write_text("not audio")
    ui = SimpleNamespace(upload_note="note", upload="upload", audio="audio")
    update = reject_upload(ui, on_upload)(str(upload))
    assert "not audio" in update["note"] and update["audio"] is None
    assert not upload.exists() and not upload.parent.exists()  # the rejected file is gone at once
    outside = tmp_path / "mine.txt"
    outside.write_text("keep")
    assert not discard_upload(outside) and outside.exists()  # only Gradio's upload folder is touched


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_prints_for_the_program_and_every_command(command, capsys):
    # A literal "%" in a help text once crashed `speech-llama --help` inside argparse.
    argv = ["--help"] if command is None else [command, "--help"]
    try:
        status = cli.main(argv)  # pass-through commands (train) print their own help and return
    except SystemExit as stopped:
        status = stopped.code
    captured = capsys.readouterr()
    assert status == 0 and "Traceback" not in captured.err, captured.err
    if command == "train":
        assert "CONFIG.yaml" in captured.out
    else:
        assert captured.out.startswith("usage: "), captured.out
    if command is None:
        assert "eval-diff" in captured.out and "95 %" in captured.out
