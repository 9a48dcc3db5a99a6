"""Spoken-dataset synthesis with the real Piper voice: files, resumability, errors, loading."""

from __future__ import annotations

import argparse
import hashlib
import json
import re

import numpy as np
import pytest
import soundfile

from apps import synthesize as synthesize_command
from speech_llama import synthesize
from speech_llama.tts import to_16k, tts_voice
from speech_llama.synthesize import (
    audio_relative_path,
    load_spoken_dataset,
    synthesize_records,
    synthesize_text,
)

RECORDS = [
    {"question": "What is the capital of Italy?", "answer": "Rome", "id": "q1"},
    {"question": "Who wrote Hamlet?", "answers": ["Shakespeare", "William Shakespeare"]},
    {"question": "Name a primary colour.", "answer": "red", "response": "Red is one.", "extra": {"k": 1}},
    {"question": "How many days are in a week?", "answer": "seven", "audio": "old/clip.wav"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def file_identity(path):
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture(scope="module")
def spoken_dir(tmp_path_factory):
    """The four records synthesised once for the module (≈1 s of Piper)."""
    out_dir = tmp_path_factory.mktemp("spoken")
    synthesize_records(write_jsonl(out_dir.parent / "records.jsonl", RECORDS), out_dir, progress=False)
    return out_dir


# ------------------------------------------------------------------------------------------
# Audio
# ------------------------------------------------------------------------------------------


def test_resample_uses_exact_ratio_and_keeps_pitch():
    seconds, tone = 1.0, 440.0
    time_22k = np.arange(int(22_050 * seconds)) / 22_050
    int16 = (np.sin(2 * np.pi * tone * time_22k) * 16_000).astype(np.int16)
    audio = to_16k(int16.astype(np.float32) / 32768.0, 22_050)
    assert audio.dtype == np.float32 and audio.shape == (16_000,)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 16_000 / len(audio) == pytest.approx(tone, abs=1.0)


@pytest.mark.real_weights
def test_synthesize_text_gives_16k_float_speech():
    audio = synthesize_text("Hello there, how are you today?")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.8 < len(audio) / 16_000 < 5.0
    assert 0.1 < np.abs(audio).max() <= 1.0


def test_synthesize_text_rejects_empty_text():
    with pytest.raises(ValueError, match="empty"):
        synthesize_text("   ")


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown Piper model 'nobody'; available: \['joe'\]"):
        tts_voice("nobody")
    with pytest.raises(ValueError, match=r"unknown voice 'nobody'; available: joe, espeak-gb-m1"):
        synthesize.synthesize_text("Hello.", "nobody")


# ------------------------------------------------------------------------------------------
# Output files
# ------------------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_writes_16k_mono_pcm16_wavs_and_data_jsonl(spoken_dir):
    rows = read_jsonl(spoken_dir / "data.jsonl")
    assert len(rows) == len(RECORDS)
    for index, (row, record) in enumerate(zip(rows, RECORDS)):
        assert row["audio"] == audio_relative_path(index, record["question"])
        assert not row["audio"].startswith("/")
        info = soundfile.info(spoken_dir / row["audio"])
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16_000, 1, "PCM_16", "WAV")
        assert info.duration > 0.5
        kept = {k: v for k, v in row.items() if k not in ("audio", "original_audio")}
        assert kept == {k: v for k, v in record.items() if k != "audio"}
    assert rows[3]["original_audio"] == "old/clip.wav"
    assert not list(spoken_dir.rglob(".*tmp*")), "temporary files left behind"


def test_audio_names_are_deterministic():
    text = "Who wrote Hamlet?"
    expected = f"audio/000007-{hashlib.sha1(text.encode()).hexdigest()[:10]}.wav"
    assert audio_relative_path(7, text) == expected == audio_relative_path(7, text)
    assert audio_relative_path(7, text + " ") != expected
    assert re.fullmatch(r"audio/\d{6}-[0-9a-f]{10}\.wav", audio_relative_path(123456, "x"))


@pytest.mark.real_weights
def test_list_input_gives_same_names(spoken_dir, tmp_path):
    data_path = synthesize_records(RECORDS[:1], tmp_path, progress=False)
    assert read_jsonl(data_path)[0]["audio"] == read_jsonl(spoken_dir / "data.jsonl")[0]["audio"]


# ------------------------------------------------------------------------------------------
# Resuming
# ------------------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_rerun_keeps_finished_wavs_and_redoes_missing_ones(tmp_path):
    records = write_jsonl(tmp_path / "records.jsonl", RECORDS)
    out_dir = tmp_path / "out"
    synthesize_records(records, out_dir, progress=False)
    wavs = [out_dir / row["audio"] for row in read_jsonl(out_dir / "data.jsonl")]
    kept = {wav: file_identity(wav) for wav in wavs[:2]}
    for wav in wavs[2:]:
        wav.unlink()
    (out_dir / "data.jsonl").unlink()

    synthesize_records(records, out_dir, progress=False)
    assert all(file_identity(wav) == identity for wav, identity in kept.items())
    assert all(wav.is_file() for wav in wavs)
    assert [row["audio"] for row in read_jsonl(out_dir / "data.jsonl")] == [
        str(wav.relative_to(out_dir)) for wav in wavs
    ]


def test_interrupted_run_resumes_without_resynthesising(tmp_path, monkeypatch):
    """Crash on the third record: the first two wavs survive and are not spoken again."""
    calls = []

    def fake_speech(text, voice="joe"):
        calls.append(text)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros(1600, dtype=np.float32)

    monkeypatch.setattr(synthesize, "synthesize_text", fake_speech)
    monkeypatch.setattr(synthesize, "check_voice", lambda voice: None)
    with pytest.raises(KeyboardInterrupt):
        synthesize_records(RECORDS, tmp_path, progress=False)
    assert len(list((tmp_path / "audio").glob("*.wav"))) == 2
    assert not (tmp_path / "data.jsonl").exists()
    assert not list(tmp_path.rglob(".*tmp*"))

    calls.clear()
    synthesize_records(RECORDS, tmp_path, progress=False)
    assert calls == [r["question"] for r in RECORDS[2:]]
    assert len(read_jsonl(tmp_path / "data.jsonl")) == len(RECORDS)


def test_training_mix_speaks_record_i_with_the_ith_training_voice_never_the_held_out_one(tmp_path, monkeypatch):
    from speech_llama.tts import HELD_OUT_SPEAKER, VOICES as CORPUS_VOICES, training_voices

    voice_of = {}

    def fake_speech(texts, voice):
        voice_of.update({text: voice for text in texts})
        return [np.zeros(1600, dtype=np.float32) for _ in texts]

    monkeypatch.setattr(synthesize, "synthesize_texts", fake_speech)
    monkeypatch.setattr(synthesize, "check_voice", lambda voice: None)
    many = [{"question": f"Question number {i}?"} for i in range(len(training_voices()) + 2)]
    synthesize_records(many, tmp_path, voice=synthesize.TRAINING_MIX, progress=False)
    names = [voice.name for voice in training_voices()]
    spoken_by = [voice_of[record["question"]] for record in many]
    assert spoken_by == names + names[:2]
    assert len(list((tmp_path / "audio").glob("*.wav"))) == len(many)
    assert all(CORPUS_VOICES[name].speaker != HELD_OUT_SPEAKER for name in spoken_by)
    assert len(set(spoken_by)) == len(names) > 10


def test_engine_voices_speak_in_chunks_of_one_voice_and_piper_one_text_at_a_time():
    from speech_llama.synthesize import SYNTHESIS_CHUNK, PlannedRecord, voice_chunks

    items = [PlannedRecord(f"t{i}", f"{i}.wav", "{}", voice) for i, voice in
             enumerate(["festival-slt"] * (SYNTHESIS_CHUNK + 1) + ["joe", "flite-awb", "joe"])]
    chunks = voice_chunks(items)
    assert [[item.text for item in chunk] for chunk in chunks][1:] == [["t16"], ["t17"], ["t19"], ["t18"]]
    assert len(chunks[0]) == SYNTHESIS_CHUNK and {item.voice for item in chunks[0]} == {"festival-slt"}



# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question": "ok"}', "{not json"], r"bad\.jsonl:2: malformed JSON"),
        (['{"answer": "x"}'], r"bad\.jsonl:1: record has no 'question' field \(fields: \['answer'\]\)"),
        (['{"question": "  "}'], r"bad\.jsonl:1: field 'question' is empty"),
        (['{"question": 3}'], r"bad\.jsonl:1: field 'question' must be a string"),
        (['["a", "list"]'], r"bad\.jsonl:1: expected a JSON object, got list"),
        (['{"question": "ok"}', "", '{"q": 1}'], r"bad\.jsonl:3: record has no 'question'"),
    ],
    ids=["malformed", "missing-field", "empty", "not-string", "not-object", "line-number-skips-blank"],
)
def test_bad_jsonl_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        synthesize_records(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "audio").exists(), "validation must run before any output"


def test_bad_list_input_names_the_record(tmp_path):
    with pytest.raises(ValueError, match=r"records\[1\]: record has no 'prompt' field"):
        synthesize_records(
            [{"prompt": "a"}, {"question": "b"}], tmp_path, text_field="prompt", progress=False
        )
    with pytest.raises(ValueError, match=r"records\[0\]: expected a dict, got str"):
        synthesize_records(["just text"], tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"records\[0\]: record cannot be written as JSON"):
        synthesize_records([{"question": "a", "blob": object()}], tmp_path, progress=False)


def test_non_jsonl_and_missing_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"expected a local \.jsonl file"):
        synthesize_records(tmp_path / "records.csv", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        synthesize_records(tmp_path / "missing.jsonl", tmp_path / "out")


# ------------------------------------------------------------------------------------------
# Loading back, CLI
# ------------------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_load_spoken_dataset_decodes_16k_audio(spoken_dir):
    from datasets import Audio

    dataset = load_spoken_dataset(spoken_dir)
    assert len(dataset) == len(RECORDS)
    assert isinstance(dataset.features["audio"], Audio)
    assert dataset.features["audio"].sampling_rate == 16_000
    row = dataset[1]
    assert row["question"] == RECORDS[1]["question"] and row["answers"] == RECORDS[1]["answers"]
    assert dataset[0]["answers"] is None, "fields missing from the first row must survive"
    array = np.asarray(row["audio"]["array"]).reshape(-1)
    assert row["audio"]["sampling_rate"] == 16_000
    wav_path = spoken_dir / read_jsonl(spoken_dir / "data.jsonl")[1]["audio"]
    expected, _ = soundfile.read(wav_path, dtype="float32")
    np.testing.assert_allclose(array, expected, atol=1e-4)


def test_load_spoken_dataset_names_broken_rows(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"question": "a"}])
    with pytest.raises(ValueError, match=r"data\.jsonl:1: no 'audio' path"):
        load_spoken_dataset(tmp_path)


@pytest.mark.real_weights
def test_cli_subcommand_arguments_and_run(tmp_path, capsys):
    records = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Say hello.", "answer": "hello"}])
    parser = synthesize_command.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--data", str(records), "--out", str(tmp_path / "out"), "--text-field", "prompt", "--no-progress"]
    )
    assert args.voice == "joe"
    assert synthesize_command.run(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "data.jsonl")
    assert read_jsonl(tmp_path / "out" / "data.jsonl")[0]["answer"] == "hello"
