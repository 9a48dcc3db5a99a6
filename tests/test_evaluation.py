"""`speech-llama eval`: outputs, batching equivalence, cascade plumbing and input errors."""

from __future__ import annotations

import json

import pytest
import soundfile
import torch
from helpers import noise_clip
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

from apps.cli import main
from speech_llama.evaluation import evaluate_model, length_sorted_batches


@pytest.fixture(scope="module")
def spoken_qa(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    rows = [("What is the capital of France?", ["Paris"], 1.2), ("Who wrote Hamlet?", ["Shakespeare"], 2.5),
            ("How many legs does a cat have?", ["four", "4"], 0.8)]
    with open(folder / "qa.jsonl", "w") as stream:
        for index, (question, answers, seconds) in enumerate(rows):
            soundfile.write(folder / f"q{index}.wav", noise_clip(seconds, seed=index), 16000)
            stream.write(json.dumps({"question": question, "answers": answers, "audio": f"q{index}.wav"}) + "\n")
    return folder / "qa.jsonl"


@pytest.mark.parametrize("task", ["t2t", "s2t"])
def test_eval_writes_predictions_and_metrics(tiny_model_dir, spoken_qa, tmp_path, task):
    metrics = evaluate_model(tiny_model_dir, str(spoken_qa), task, tmp_path, batch_size=2, max_new_tokens=4, progress=False)
    assert metrics["task"] == task and metrics["n"] == 3 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["samples_per_s"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == ["What is the capital of France?", "Who wrote Hamlet?", "How many legs does a cat have?"]
    assert set(rows[0]) == {"question", "prediction", "answers", "correct"}
    assert rows[2]["answers"] == ["four", "4"]


@pytest.mark.parametrize("task", ["t2t", "s2t"])
def test_batched_predictions_equal_one_at_a_time(tiny_model_dir, spoken_qa, tmp_path, task):
    evaluate_model(tiny_model_dir, str(spoken_qa), task, tmp_path / "b1", batch_size=1, max_new_tokens=5, progress=False)
    evaluate_model(tiny_model_dir, str(spoken_qa), task, tmp_path / "b3", batch_size=3, max_new_tokens=5, progress=False)
    read = lambda d: [json.loads(line)["prediction"] for line in (d / "predictions.jsonl").read_text().splitlines()]
    assert read(tmp_path / "b1") == read(tmp_path / "b3")


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory, tiny_model_dir):
    """A random 1-layer Whisper ASR with a real tokenizer: cascade plumbing only."""
    from speech_llama.offline.ctranslate2_whisper import whisper_tiny_en_dir

    real = whisper_tiny_en_dir()
    folder = tmp_path_factory.mktemp("asr")
    tokenizer = WhisperTokenizerFast.from_pretrained(real)
    config = WhisperConfig.from_pretrained(real)
    config.update({"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
                   "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32})
    model = WhisperForConditionalGeneration(config)
    model.generation_config = WhisperForConditionalGeneration.from_pretrained(real).generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor.from_pretrained(real).save_pretrained(folder)
    return folder


def test_speech_instruction_override_is_used_and_recorded(tiny_model_dir, spoken_qa, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(spoken_qa), "--task", "s2t", "--out",
                 str(tmp_path / "none"), "--batch-size", "2", "--max-new-tokens", "3", "--speech-instruction", ""]) == 0
    assert json.loads((tmp_path / "none" / "metrics.json").read_text())["speech_instruction"] == ""
    default = evaluate_model(tiny_model_dir, str(spoken_qa), "s2t", tmp_path / "default", batch_size=2,
                             max_new_tokens=3, progress=False)
    assert default["speech_instruction"].strip() == "Please directly answer the questions in the user's speech."
    assert "speech_instruction" not in evaluate_model(tiny_model_dir, str(spoken_qa), "t2t", tmp_path / "t2t",
                                                      batch_size=2, max_new_tokens=3, progress=False)


def test_cascade_records_transcripts(tiny_model_dir, spoken_qa, tiny_whisper_dir, tmp_path):
    metrics = evaluate_model(tiny_model_dir, str(spoken_qa), "cascade", tmp_path, batch_size=2, max_new_tokens=3,
                             asr_model=tiny_whisper_dir, progress=False)
    assert metrics["task"] == "cascade"
    assert metrics["asr"] == str(tiny_whisper_dir)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(isinstance(r["transcript"], str) for r in rows)


def test_s2t_without_audio_names_row_and_column(tiny_model_dir, tmp_path):
    data = tmp_path / "text_only.jsonl"
    data.write_text(json.dumps({"question": "Q?", "answers": ["a"]}) + "\n")
    with pytest.raises(ValueError, match="audio"):
        evaluate_model(tiny_model_dir, str(data), "s2t", tmp_path / "out", progress=False)


def test_cli_reports_bad_input_without_traceback(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"question": "Q?", "answers": ["a"]}\n{not json\n')
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--task", "t2t", "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "broken.jsonl" in error and "line 2" in error and "Traceback" not in error


def test_length_sorted_batches_cover_every_item_once():
    class Item:
        def __init__(self, question):
            self.question, self.audio = question, None

    items = [Item("x" * n) for n in (5, 1, 9, 3, 7)]
    batches = length_sorted_batches(items, 2, by_audio=False)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert batches[0] == [1, 3]
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(items, 0, by_audio=False)


def test_cli_eval_in_bfloat16_loads_bf16_weights_and_records_it(tiny_model_dir, spoken_qa, tmp_path, monkeypatch):
    import speech_llama.evaluation as evaluation

    loaded = []
    real_load_model = evaluation.load_model

    def spy(*args, **kwargs):
        model, processor = real_load_model(*args, **kwargs)
        loaded.append({parameter.dtype for parameter in model.parameters()})
        return model, processor

    monkeypatch.setattr(evaluation, "load_model", spy)
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(spoken_qa), "--task", "s2t", "--out",
                 str(tmp_path), "--batch-size", "2", "--max-new-tokens", "3", "--dtype", "bfloat16"]) == 0
    assert loaded == [{torch.bfloat16}]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dtype"] == "bfloat16" and metrics["n"] == 3


def test_unknown_dtype_is_refused_before_loading(tiny_model_dir, spoken_qa, tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of .*'bfloat16'.*got 'int8'"):
        evaluate_model(tiny_model_dir, str(spoken_qa), "t2t", tmp_path, dtype="int8", progress=False)
