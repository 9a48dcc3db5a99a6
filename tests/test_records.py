"""Tests for speech_llama.records: loading QA / instruction records and reading their audio."""

import io
import json
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile

from speech_llama import records
from speech_llama.audio import read_audio
from speech_llama.records import (
    AUDIO_FEATURE,
    RecordsError,
    detect_layout,
    load_records,
    normalize_columns,
)

TONE_HZ = 440.0


def _tone(sampling_rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(sampling_rate * seconds)) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def _dominant_hz(samples: np.ndarray, sampling_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / sampling_rate)[np.argmax(spectrum)])


def _wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format="WAV")
    return buffer.getvalue()


def _write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (one JSON line each) or raw strings (written as they are)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _audio_dataset(columns: dict, audio_column: str, audio_bytes: list) -> datasets.Dataset:
    """An in-memory dataset with a Hub-like embedded-bytes Audio column (no torchcodec needed)."""
    columns = dict(columns)
    columns[audio_column] = [{"bytes": data, "path": None} for data in audio_bytes]
    dataset = datasets.Dataset.from_dict(columns)
    return dataset.cast_column(audio_column, datasets.Audio())


@pytest.fixture(scope="module")
def wav_dir(tmp_path_factory):
    """16 kHz mono, 22 050 Hz mono and 44.1 kHz stereo (left 0.6, right 0.2 amplitude) tones."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "wavs").mkdir()
    soundfile.write(folder / "wavs" / "mono16k.wav", _tone(16_000, 0.5), 16_000)
    soundfile.write(folder / "wavs" / "mono22k.wav", _tone(22_050, 1.0), 22_050)
    stereo = np.stack([_tone(44_100, 0.5, 0.6), _tone(44_100, 0.5, 0.2)], axis=1)
    soundfile.write(folder / "wavs" / "stereo44k.wav", stereo, 44_100)
    return folder


@pytest.fixture
def qa_jsonl(wav_dir):
    return _write_jsonl(
        wav_dir / "qa.jsonl",
        [
            {"question": "Who wrote Hamlet?", "answer": "Shakespeare", "audio": "wavs/mono16k.wav"},
            "",  # blank lines are skipped but still counted in line numbers
            {"question": "How many legs?", "answers": ["4", "four"], "audio": "wavs/mono22k.wav"},
            {"question": "Loud?", "answer": "yes", "audio": "wavs/stereo44k.wav"},
        ],
    )


# --- read_audio ----------------------------------------------------------------------------


def test_read_audio_keeps_16k_mono(wav_dir):
    waveform = read_audio(str(wav_dir / "wavs" / "mono16k.wav"), where="test")
    assert waveform.dtype == np.float32
    np.testing.assert_allclose(waveform, _tone(16_000, 0.5), atol=1e-4)


def test_read_audio_resamples_22050_by_exact_ratio(wav_dir):
    waveform = read_audio(wav_dir / "wavs" / "mono22k.wav", where="test")
    assert waveform.dtype == np.float32
    assert waveform.shape == (16_000,)  # 1 s x 320/441 of 22 050 Hz, exactly
    assert _dominant_hz(waveform, 16_000) == pytest.approx(TONE_HZ, abs=1.0)


def test_read_audio_downmixes_stereo_with_a_warning(wav_dir):
    with pytest.warns(UserWarning, match="downmixing 2 channels"):
        waveform = read_audio(str(wav_dir / "wavs" / "stereo44k.wav"), where="stereo test")
    assert waveform.shape == (8_000,)
    middle = waveform[1000:-1000]  # away from the resampler's edge effects
    assert np.max(np.abs(middle)) == pytest.approx(0.4, abs=0.02)  # mean of 0.6 and 0.2
    assert _dominant_hz(waveform, 16_000) == pytest.approx(TONE_HZ, abs=2.0)


def test_read_audio_from_embedded_bytes():
    waveform = read_audio({"bytes": _wav_bytes(_tone(22_050, 0.5), 22_050), "path": None}, where="test")
    assert waveform.shape == (8_000,)


def test_read_audio_from_array_dict_channels_first_int16():
    tone = _tone(8_000, 0.5)
    pcm = (np.stack([tone, tone]) * 32767).astype(np.int16)  # channels x frames, integer PCM
    with pytest.warns(UserWarning, match="downmixing"):
        waveform = read_audio({"array": pcm, "sampling_rate": 8_000}, where="test")
    assert waveform.shape == (8_000,)
    assert np.max(np.abs(waveform[500:-500])) == pytest.approx(0.5, abs=0.02)


def test_read_audio_from_decoder_object():
    class FakeSamples:
        data = _tone(16_000, 0.25)[None, :]  # torchcodec: channels x frames
        sample_rate = 16_000

    class FakeDecoder:
        def get_all_samples(self):
            return FakeSamples()

    waveform = read_audio(FakeDecoder(), where="test")
    np.testing.assert_allclose(waveform, _tone(16_000, 0.25), atol=1e-6)


@pytest.mark.parametrize(
    "value",
    [None, "/no/such/file.wav", {"bytes": b"not a wav file", "path": "x.wav"}, {"array": [0.1, 0.2]}, 42],
)
def test_read_audio_errors_name_where(value):
    with pytest.raises(RecordsError, match=r"data\.jsonl, line 3, column 'audio'"):
        read_audio(value, where="data.jsonl, line 3, column 'audio'")


# --- JSONL ---------------------------------------------------------------------------------


def test_jsonl_records_follow_the_contract(qa_jsonl, wav_dir):
    loaded = load_records(qa_jsonl)
    assert loaded.column_names == ["question", "answers", "audio"]
    assert loaded.features["audio"] == AUDIO_FEATURE
    assert loaded["question"] == ["Who wrote Hamlet?", "How many legs?", "Loud?"]
    assert loaded["answers"] == [["Shakespeare"], ["4", "four"], ["yes"]]
    paths = [value["path"] for value in loaded["audio"]]
    assert paths == [
        str((wav_dir / "wavs" / name).resolve()) for name in ("mono16k.wav", "mono22k.wav", "stereo44k.wav")
    ]
    assert read_audio(loaded[1]["audio"], where="row 2").shape == (16_000,)


def test_jsonl_works_from_another_working_directory(qa_jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # audio paths are relative to the file, not to the cwd
    loaded = load_records(str(qa_jsonl), require_audio=True)
    assert all(Path(value["path"]).is_file() for value in loaded["audio"])


def test_jsonl_max_samples_stops_reading_early(wav_dir):
    path = _write_jsonl(
        wav_dir / "long.jsonl",
        [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)] + ["{this line is broken"],
    )
    loaded = load_records(path, max_samples=2)
    assert loaded["question"] == ["q0", "q1"]
    with pytest.raises(RecordsError, match=r"long\.jsonl, line 4: invalid JSON"):
        load_records(path)


def test_jsonl_missing_audio_file_names_file_line_and_column(wav_dir):
    path = _write_jsonl(
        wav_dir / "missing.jsonl",
        [
            {"question": "a?", "answer": "a", "audio": "wavs/mono16k.wav"},
            {"question": "b?", "answer": "b", "audio": "wavs/nope.wav"},
        ],
    )
    with pytest.raises(RecordsError) as error:
        load_records(path)
    assert "missing.jsonl, line 2, column 'audio'" in str(error.value)
    assert "nope.wav" in str(error.value)


def test_jsonl_require_audio_names_the_row_without_audio(wav_dir):
    path = _write_jsonl(
        wav_dir / "partial_audio.jsonl",
        [{"question": "a?", "answer": "a", "audio": "wavs/mono16k.wav"}, {"question": "b?", "answer": "b"}],
    )
    assert len(load_records(path)) == 2  # audio is optional by default
    with pytest.raises(RecordsError, match=r"partial_audio\.jsonl, line 2, column 'audio'.*required"):
        load_records(path, require_audio=True)


def test_require_audio_without_any_audio_column(wav_dir):
    path = _write_jsonl(wav_dir / "text_only.jsonl", [{"question": "a?", "answer": "a"}])
    with pytest.raises(
        RecordsError, match=r"text_only\.jsonl: audio is required.*Columns found: \['question', 'answer'\]"
    ):
        load_records(path, require_audio=True)


def test_jsonl_empty_question_names_line_and_column(wav_dir):
    path = _write_jsonl(
        wav_dir / "empty_q.jsonl",
        [{"question": "ok?", "answer": "a"}, "", {"question": "   ", "answer": "b"}],
    )
    with pytest.raises(
        RecordsError, match=r"empty_q\.jsonl, line 3, column 'question': the question is empty"
    ):
        load_records(path)


def test_jsonl_answers_must_be_a_list(wav_dir):
    path = _write_jsonl(wav_dir / "str_answers.jsonl", [{"question": "q?", "answers": "Paris"}])
    with pytest.raises(
        RecordsError, match=r"str_answers\.jsonl, line 1, column 'answers': expected a list of strings"
    ):
        load_records(path)


def test_jsonl_type_conflict_between_lines_names_the_line(wav_dir):
    path = _write_jsonl(
        wav_dir / "mixed.jsonl", [{"question": "q?", "answers": ["a"]}, {"question": "r?", "answers": "b"}]
    )
    with pytest.raises(RecordsError, match=r"mixed\.jsonl, line 2, column 'answers': got str"):
        load_records(path)


def test_jsonl_answer_must_be_a_string(wav_dir):
    path = _write_jsonl(wav_dir / "int_answer.jsonl", [{"question": "When?", "answer": 1969}])
    with pytest.raises(
        RecordsError, match=r"int_answer\.jsonl, line 1, column 'answer': expected a string, got int"
    ):
        load_records(path)


def test_require_answers_names_the_row_without_answers(wav_dir):
    path = _write_jsonl(
        wav_dir / "no_answer.jsonl",
        [{"question": "q?", "answers": ["a"]}, {"question": "r?", "answers": ["", " "]}],
    )
    assert load_records(path, require_answers=False)["answers"] == [["a"], []]
    with pytest.raises(RecordsError, match=r"no_answer\.jsonl, line 2, column 'answers': no gold answer"):
        load_records(path)


def test_missing_columns_are_listed(wav_dir):
    path = _write_jsonl(wav_dir / "odd.jsonl", [{"q": "Who?", "a": "Me"}])
    with pytest.raises(RecordsError) as error:
        load_records(path)
    message = str(error.value)
    assert "odd.jsonl" in message and "Columns found: ['q', 'a']" in message


def test_jsonl_line_that_is_not_an_object(wav_dir):
    path = _write_jsonl(wav_dir / "list_line.jsonl", [{"question": "q?", "answer": "a"}, "[1, 2]"])
    with pytest.raises(RecordsError, match=r"list_line\.jsonl, line 2: expected a JSON object, got list"):
        load_records(path)


def test_empty_jsonl_has_no_records(wav_dir):
    path = wav_dir / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(RecordsError, match=r"empty\.jsonl: no records"):
        load_records(path)


def test_jsonl_instruction_records_keep_a_response(wav_dir):
    path = _write_jsonl(
        wav_dir / "instruct.jsonl",
        [{"question": "Tell me a joke.", "response": "Why did the chicken...", "audio": "wavs/mono16k.wav"}],
    )
    loaded = load_records(path)
    assert loaded[0]["question"] == "Tell me a joke."
    assert loaded[0]["response"] == "Why did the chicken..."
    assert loaded[0]["answers"] == []


# --- other sources -------------------------------------------------------------------------


def test_unsupported_file_and_unknown_path(wav_dir, tmp_path):
    text_file = tmp_path / "records.txt"
    text_file.write_text("hello", encoding="utf-8")
    with pytest.raises(RecordsError, match="unsupported file type"):
        load_records(text_file)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_records(tmp_path / "nowhere" / "records.jsonl")
    with pytest.raises(ValueError, match="max_samples"):
        load_records(text_file, max_samples=0)


def test_saved_dataset_folder_with_relative_path_column(wav_dir, tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict(
        {"question": ["Who?", "What?"], "answers": [["me"], ["it"]], "speech": ["clip.wav", None]}
    ).save_to_disk(str(folder))
    soundfile.write(folder / "clip.wav", _tone(16_000, 0.1), 16_000)  # relative to the folder
    loaded = load_records(folder, max_samples=1, require_audio=True)
    assert loaded["question"] == ["Who?"]
    assert loaded[0]["audio"]["path"] == str((folder / "clip.wav").resolve())


def test_saved_dataset_folder_with_audio_feature(tmp_path):
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, _tone(16_000, 0.1), 16_000)
    dataset = datasets.Dataset.from_dict({"question": ["Who?"], "answer": ["me"], "audio": [str(clip)]})
    dataset.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "saved"))
    clip.unlink()  # save_to_disk embedded the bytes: the folder does not need the file
    loaded = load_records(tmp_path / "saved", require_audio=True)
    assert loaded.features["audio"] == AUDIO_FEATURE
    assert read_audio(loaded[0]["audio"], where="row 1").shape == (1_600,)


def test_saved_dataset_folder_with_missing_audio_file(tmp_path):
    missing = str(tmp_path / "gone.wav")
    datasets.Dataset.from_dict(
        {"question": ["Who?"], "answer": ["me"], "audio": [{"bytes": None, "path": missing}]}
    ).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(
        RecordsError, match=r"saved, row 1, column 'audio': audio file not found: .*gone\.wav"
    ):
        load_records(tmp_path / "saved")


def test_saved_dataset_dict_picks_the_split(tmp_path):
    splits = {
        name: datasets.Dataset.from_dict({"question": [f"{name}?"], "answer": [name]})
        for name in ("train", "test")
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    assert load_records(tmp_path / "dict")["question"] == ["test?"]
    assert load_records(tmp_path / "dict", split="train")["answers"] == [["train"]]
    with pytest.raises(RecordsError, match=r"no split 'validation'; available splits: \['test', 'train'\]"):
        load_records(tmp_path / "dict", split="validation")


def test_saved_dataset_empty_question_names_row_and_column(tmp_path):
    datasets.Dataset.from_dict({"question": ["ok", ""], "answer": ["a", "b"]}).save_to_disk(
        str(tmp_path / "bad")
    )
    with pytest.raises(RecordsError, match=r"bad, row 2, column 'question': the question is empty"):
        load_records(tmp_path / "bad")


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(RecordsError, match="save_to_disk"):
        load_records(tmp_path / "plain")


def test_hub_id_goes_through_load_dataset_and_normalisation(monkeypatch):
    calls = []
    hub_like = _audio_dataset(
        {"question": ["Who painted the Mona Lisa?"], "answer": ["Leonardo da Vinci"]},
        "audio",
        [_wav_bytes(_tone(16_000, 0.1), 16_000)],
    )

    def fake_load_dataset(dataset_id, split):
        calls.append((dataset_id, split))
        return hub_like

    monkeypatch.setattr(records.datasets, "load_dataset", fake_load_dataset)
    loaded = load_records("fixie-ai/llama-questions", split="test", require_audio=True)
    assert calls == [("fixie-ai/llama-questions", "test")]
    assert loaded["answers"] == [["Leonardo da Vinci"]]
    assert read_audio(loaded[0]["audio"], where="row 1").shape == (1_600,)


# --- Hub layouts, via normalize_columns ----------------------------------------------------


@pytest.fixture(scope="module")
def clip_bytes():
    return [_wav_bytes(_tone(22_050, 0.2), 22_050), _wav_bytes(_tone(16_000, 0.2), 16_000)]


def test_llama_questions_layout(clip_bytes):
    hub_like = _audio_dataset({"question": ["q1?", "q2?"], "answer": ["a1", "a2"]}, "audio", clip_bytes)
    loaded = normalize_columns(hub_like, "fixie-ai/llama-questions")
    assert loaded.column_names == ["question", "answers", "audio"]
    assert loaded["answers"] == [["a1"], ["a2"]]
    assert [read_audio(value, where="x").shape for value in loaded["audio"]] == [(3_200,), (3_200,)]


@pytest.mark.parametrize(
    ("answer_column", "answer_values", "audio_column"),
    [
        ("answers", [["Obama", "Barack Obama"], ["Paris"]], "audio"),
        ("answer", ["Obama", "Paris"], "question_audio"),
    ],
)
def test_spoken_web_questions_layouts(clip_bytes, answer_column, answer_values, audio_column):
    hub_like = _audio_dataset(
        {"url": ["u1", "u2"], "question": ["who?", "where?"], answer_column: answer_values},
        audio_column,
        clip_bytes,
    )
    loaded = normalize_columns(hub_like, "chiyuanhsiao/spoken-web-questions")
    assert loaded.column_names == ["question", "answers", "audio"]
    assert loaded["answers"][1] == ["Paris"]
    assert loaded.features["audio"] == AUDIO_FEATURE


def test_spoken_web_questions_without_audio_lists_columns():
    hub_like = datasets.Dataset.from_dict({"question": ["who?"], "answers": [["x"]], "url": ["u"]})
    with pytest.raises(RecordsError) as error:
        normalize_columns(hub_like, "chiyuanhsiao/spoken-web-questions")
    assert "no audio column" in str(error.value)
    assert "Columns found: ['question', 'answers', 'url']" in str(error.value)


def test_voice_assistant_keeps_the_first_round_only(clip_bytes):
    hub_like = _audio_dataset(
        {
            "split_name": ["a", "a"],
            "index": ["0", "0"],
            "round": ["0", "1"],
            "question": ["Hi, what is a good pasta recipe?", "And without cheese?"],
            "answer": ["Try carbonara.", "Try aglio e olio."],
            "answer_snac": ["#1", "#2"],
        },
        "question_audio",
        clip_bytes,
    )
    loaded = normalize_columns(hub_like, "gpt-omni/VoiceAssistant-400K", require_answers=True)
    assert loaded.column_names == ["question", "answers", "response", "audio"]
    assert loaded["question"] == ["Hi, what is a good pasta recipe?"]
    assert loaded["response"] == ["Try carbonara."]
    assert loaded["answers"] == [[]]
    assert read_audio(loaded[0]["audio"], where="x").shape == (3_200,)


def test_spoken_alpaca_instruction_layout(clip_bytes):
    hub_like = _audio_dataset(
        {
            "instruction": ["Summarise the text.", "Name a colour."],
            "input": ["Cats sleep a lot.", ""],
            "output": ["Cats sleep.", "Blue."],
        },
        "speech",
        clip_bytes,
    )
    loaded = normalize_columns(hub_like, "GSQA/spoken-alpaca-gpt4", max_samples=2)
    assert loaded["question"] == ["Summarise the text.\n\nCats sleep a lot.", "Name a colour."]
    assert loaded["response"] == ["Cats sleep.", "Blue."]


def test_conversation_layout_takes_the_first_turn(clip_bytes):
    conversations = [
        [
            {"from": "human", "value": "What is 2+2?"},
            {"from": "gpt", "value": "4."},
            {"from": "human", "value": "And 3+3?"},
            {"from": "gpt", "value": "6."},
        ],
        [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hello"},
            {"from": "gpt", "value": "Hi!"},
        ],
    ]
    hub_like = _audio_dataset({"conversation": conversations}, "audio", clip_bytes)
    loaded = normalize_columns(hub_like, "GSQA/spoken-alpaca-gpt4")
    assert loaded["question"] == ["What is 2+2?", "Hello"]
    assert loaded["response"] == ["4.", "Hi!"]


def test_messages_layout_with_multimodal_content(clip_bytes):
    messages = [
        [
            {
                "role": "user",
                "content": [{"type": "audio", "text": None}, {"type": "text", "text": "Translate: hola"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        ]
    ]
    hub_like = _audio_dataset({"messages": messages}, "audio", clip_bytes[:1])
    loaded = normalize_columns(hub_like, "gpt-omni/VoiceAssistant-400K")
    assert (loaded[0]["question"], loaded[0]["response"]) == ("Translate: hola", "hello")


def test_conversation_without_user_turn_names_row_and_column(clip_bytes):
    conversations = [[{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "hello"}]]
    hub_like = _audio_dataset({"messages": conversations}, "audio", clip_bytes)
    with pytest.raises(
        RecordsError, match=r"GSQA/spoken-alpaca-gpt4, row 2, column 'messages': no user turn"
    ):
        normalize_columns(hub_like, "GSQA/spoken-alpaca-gpt4")


def test_instruction_require_answers_needs_a_response(clip_bytes):
    hub_like = _audio_dataset({"messages": [[{"role": "user", "content": "hi"}]]}, "audio", clip_bytes[:1])
    assert normalize_columns(hub_like, "GSQA/spoken-alpaca-gpt4")["response"] == [""]
    with pytest.raises(RecordsError, match=r"row 1, column 'messages': no response"):
        normalize_columns(hub_like, "GSQA/spoken-alpaca-gpt4", require_answers=True)


def test_unknown_instruction_layout_lists_columns(clip_bytes):
    hub_like = _audio_dataset({"text": ["a", "b"], "label": [0, 1]}, "audio", clip_bytes)
    with pytest.raises(RecordsError) as error:
        normalize_columns(hub_like, "GSQA/spoken-alpaca-gpt4")
    message = str(error.value)
    assert message.startswith("GSQA/spoken-alpaca-gpt4: cannot find the record columns")
    assert "Columns found: ['text', 'label', 'audio']" in message


def test_hub_ids_are_matched_case_insensitively():
    layout = detect_layout(["question", "answer", "audio"], "Fixie-AI/Llama-Questions")
    assert (layout.kind, layout.answer, layout.audio) == ("qa", "answer", "audio")


def test_non_audio_column_is_rejected():
    dataset = datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"], "audio": [1.5]})
    with pytest.raises(RecordsError, match=r"src, row 1, column 'audio': the column holds"):
        normalize_columns(dataset, "src")


def test_array_struct_audio_is_kept_and_readable():
    dataset = datasets.Dataset.from_dict(
        {
            "question": ["q"],
            "answer": ["a"],
            "audio": [{"array": _tone(8_000, 0.1).tolist(), "sampling_rate": 8_000}],
        }
    )
    loaded = normalize_columns(dataset, "in-memory", require_audio=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mono input: no downmix warning
        assert read_audio(loaded[0]["audio"], where="row 1").shape == (1_600,)
