"""The paper's data sets (speech_llama/records/paper_data.py) against their schema fixtures, and the
`reproduce --preset paper-1b` plan / dry run / data stage on them (tests/fixtures/paper_data/, written by
tests/paper_fixtures.py with each card's exact columns, types and file formats). Seconds, no network."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paper_fixtures  # noqa: E402

from apps.reproduce import paper  # noqa: E402
from speech_llama.audio import read_audio  # noqa: E402
from speech_llama.errors import RecordsError  # noqa: E402
from speech_llama.records import load_records  # noqa: E402
from speech_llama.records.paper_data import (  # noqa: E402
    LLAMA_QUESTIONS,
    SPOKEN_ALPACA,
    VOICE_ASSISTANT,
    WEB_QUESTIONS,
    HubUnreachableError,
    interleave,
    paper_source,
    stream_records,
)

FIXTURES = paper_fixtures.ROOT


def at(source):
    return FIXTURES / source.short_name


# --- the fixtures are what the cards say ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(paper_fixtures.SCHEMAS))
def test_fixture_files_hold_the_card_schema(name):
    """Columns in the card's order with its types, read back from the committed file."""
    folder = FIXTURES / name
    files = sorted(folder.rglob("*.parquet")) or sorted(folder.glob("*.arrow"))
    assert files, f"no data file under {folder}"
    if files[0].suffix == ".parquet":
        table = datasets.Dataset.from_parquet(str(files[0]))
    else:
        table = datasets.Dataset.from_file(str(files[0]))
    assert list(table.features) == list(paper_fixtures.SCHEMAS[name])
    for column, feature in paper_fixtures.SCHEMAS[name].items():
        assert type(table.features[column]) is type(feature), (column, table.features[column])
    assert sum(path.stat().st_size for path in files) < 50_000, "fixtures must stay tiny"


# --- streaming loaders ---------------------------------------------------------------------------------------


def test_voice_assistant_takes_first_rounds_only():
    records = stream_records(VOICE_ASSISTANT, 10, location=at(VOICE_ASSISTANT))
    assert records.column_names == ["question", "answers", "response", "audio"]
    assert [question.split(":")[0] for question in records["question"]] == ["Question 0.0", "Question 1.0", "Question 2.0"]
    assert records["response"] == ["It is 4.", "It is 5.", "It is 6."]
    # 24 kHz WAV bytes come back as 16 kHz float32 (0.1 s)
    assert read_audio(records[0]["audio"], where="row 1").shape == (1_600,)


def test_skip_and_count_address_first_turns():
    held_out = stream_records(VOICE_ASSISTANT, 1, skip=2, location=at(VOICE_ASSISTANT))
    assert held_out["question"][0].startswith("Question 2.0")
    with pytest.raises(RecordsError, match="no first-turn rows after skipping 3"):
        stream_records(VOICE_ASSISTANT, 1, skip=3, location=at(VOICE_ASSISTANT))
    with pytest.raises(ValueError, match="count must be a positive int"):
        stream_records(VOICE_ASSISTANT, 0, location=at(VOICE_ASSISTANT))


def test_spoken_alpaca_reads_input_audio_and_appends_input():
    records = stream_records(SPOKEN_ALPACA, 4, location=at(SPOKEN_ALPACA))
    assert records["question"][:2] == ["Give three tips for staying healthy.",
                                       "Summarise the text.\n\nCats sleep for most of the day."]
    assert records["response"][3] == "Bonjour"
    first = read_audio(records[0]["audio"], where="row 1")
    assert first.shape == (1_600,)  # 22 050 Hz → 16 kHz, exact ratio
    # the question's audio, not the response's (output_audio is 600 Hz and up, input_audio 300 Hz)
    spectrum = abs(__import__("numpy").fft.rfft(first))
    assert 250 <= spectrum.argmax() * 16_000 / len(first) <= 350


def test_qa_sets_keep_gold_answers():
    llama = stream_records(LLAMA_QUESTIONS, LLAMA_QUESTIONS.rows, location=at(LLAMA_QUESTIONS))
    assert llama["answers"] == [["Paris"], ["eight"], ["William Shakespeare"]]
    web = stream_records(WEB_QUESTIONS, WEB_QUESTIONS.rows, location=at(WEB_QUESTIONS))
    assert web.column_names == ["question", "answers", "audio"]
    assert web["answers"][1] == ["Mark Hamill", "Mark Richard Hamill"]


def test_interleave_alternates_sources():
    a = stream_records(VOICE_ASSISTANT, 3, location=at(VOICE_ASSISTANT))
    b = stream_records(SPOKEN_ALPACA, 2, location=at(SPOKEN_ALPACA))
    mixed = interleave([a, b])
    assert [q[:8] for q in mixed["question"]] == ["Question", "Give thr", "Question", "Summaris", "Question"]


def test_unreachable_hub_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'gpt-omni/VoiceAssistant-400K' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubUnreachableError) as error:
        stream_records(VOICE_ASSISTANT, 5)
    message = str(error.value)
    assert "\n" not in message and message.startswith("gpt-omni/VoiceAssistant-400K: the Hugging Face Hub cannot be reached")


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        stream_records(LLAMA_QUESTIONS, 1, location=tmp_path / "missing")
    with pytest.raises(RecordsError, match="not one of the paper's data sets"):
        paper_source("someone/else")
    assert paper_source("fixie-ai/LLAMA-questions") is LLAMA_QUESTIONS
    # a copy whose audio column was renamed: the missing column is named with the columns found
    (tmp_path / "llama-questions" / "data").mkdir(parents=True)
    rows = paper_fixtures.llama_questions_rows()
    renamed = paper_fixtures.as_dataset("llama-questions", rows).rename_column("audio", "speech")
    renamed.to_parquet(str(tmp_path / "llama-questions" / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(RecordsError, match=r"no audio column 'audio'; columns: \['question', 'answer', 'speech'\]"):
        stream_records(LLAMA_QUESTIONS, 1, location=tmp_path / "llama-questions")


# --- reproduce --preset paper-1b -------------------------------------------------------------------------


def args_for(out: Path, **overrides) -> argparse.Namespace:
    values = dict(preset="paper-1b", out=out, dry_run=False, train_records=None, gpus=None, data_root=None,
                  fast=False, ablation=None, seeds=None, no_progress=True)
    return argparse.Namespace(**(values | overrides))


def test_plan_figures():
    preset = paper.PAPER_PRESETS["paper-1b"]
    steps = paper.training_steps(preset)
    assert steps == {"records": 40_000, "per_epoch": 1_250, "total": 3_750, "warmup": 113, "accumulation": 1}
    plan = paper.make_plan(preset, Path("/tmp/run"))
    counts = plan["memory"]["counts"]
    # Llama-3.2-1B (tied, 128 257 rows with <speech>) + whisper-large-v3 encoder + adaptor
    assert counts["embed"] == 128_257 * 2048 and counts["unit"] == 60_821_504
    assert 1.88e9 < counts["params"] < 1.90e9, counts
    assert plan["importance_records"] == 1_334
    assert plan["memory"]["full"]["fsdp4_GB"] < plan["memory"]["full"]["one_gpu_GB"]
    stages = [row["stage"] for row in plan["stages"]]
    assert stages[:3] == ["data", "build", "importance-text"] and stages[-1] == "compare"
    eight = paper.make_plan(paper.PAPER_PRESETS["paper-8b"], Path("/tmp/run"))
    assert eight["steps"]["accumulation"] == 4 and 8.6e9 < eight["memory"]["counts"]["params"] < 8.8e9


def test_dry_run_without_the_hub_fails_in_one_line(tmp_path, monkeypatch, capsys):
    from speech_llama.commands import exit_status

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    status = exit_status("speech-llama reproduce", lambda: paper.run(args_for(tmp_path / "run", dry_run=True)))
    captured = capsys.readouterr()
    assert status == 2
    assert "plan paper-1b: meta-llama/Llama-3.2-1B-Instruct" in captured.out and "stage train-layer_lr" in captured.out
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(
        "speech-llama reproduce: error: gpt-omni/VoiceAssistant-400K: the Hugging Face Hub cannot be reached")
    assert not (tmp_path / "run").exists()


def test_dry_run_on_the_fixtures(tmp_path, capsys):
    paper.run(args_for(tmp_path / "run", dry_run=True, data_root=FIXTURES))
    out = capsys.readouterr().out
    assert out.count("reachable ") == 4 and "dry run: the plan holds" in out


def test_data_stage_on_the_fixtures_writes_what_run_sh_reads(tmp_path):
    out = tmp_path / "run"
    plan = paper.run(args_for(out, train_records=2, gpus=2, data_root=FIXTURES))
    # 2 first turns from each set for training, the next ones held out (VoiceAssistant has 1 left, alpaca 2)
    assert plan["records"] == {"train": 4, "heldout": 3, "llama-questions": 3, "spoken-web-questions": 3}
    train = load_records(out / "data" / "train", require_audio=True)
    assert train.column_names == ["question", "answers", "response", "audio"] and train["answers"] == [[]] * 4
    assert [q[:8] for q in train["question"]] == ["Question", "Give thr", "Question", "Summaris"]
    assert load_records(out / "data" / "llama-questions", require_audio=True)["answers"][0] == ["Paris"]
    config = yaml.safe_load((out / "configs" / "layer_lr.yaml").read_text())
    assert config["gradient_accumulation_steps"] == 2 and config["importance"].endswith("importance/base-text.json")
    assert yaml.safe_load((out / "configs" / "accelerate-fsdp.yaml").read_text())["num_processes"] == 2
    script = (out / "run.sh").read_text()
    assert "trainers/run.py" in script and "--max-samples 1" in script and "stage data" not in script
    assert json.loads((out / "plan.json").read_text())["steps"]["total"] == 3


@pytest.mark.parametrize(("overrides", "message"), [
    ({"gpus": 3}, "global batch 32 is not a multiple of 8 per GPU × 3 GPUs"),
    ({"train_records": 0}, "--train-records must be 1 or more"),
    ({"seeds": 2}, "--seeds: not for --preset paper-1b"),
])
def test_bad_options_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        paper.run(args_for(tmp_path / "run", **overrides))
