"""Writes tests/fixtures/paper_data/: tiny local copies of the paper's four data sets, laid out as their
Hub repositories and with exactly their columns, types and file formats (speech_llama/records/paper_data.py
gives the schemas and where they come from).

    .venv/bin/python tests/paper_fixtures.py            # (re)write the committed fixtures

Audio: short WAV tones (0.1 s, 16-bit PCM). Sampling rates: spoken-alpaca-gpt4 22 050 Hz (public code reads
its `input_audio` at 22 050 Hz), spoken-web-questions 16 kHz (its derived sets declare
`Audio(sampling_rate=16000)`); the cards of VoiceAssistant-400K and llama-questions give no rate: 24 kHz and
16 kHz here, so the loaders meet three rates. Sizes: a few KB per file.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

import datasets
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent / "fixtures" / "paper_data"
CLIP_SECONDS = 0.1

# Column → feature, in the order of each card's `dataset_info.features`.
SCHEMAS = {
    "VoiceAssistant-400K": {
        "split_name": datasets.Value("string"), "index": datasets.Value("string"), "round": datasets.Value("string"),
        "question": datasets.Value("string"), "question_audio": datasets.Audio(), "answer": datasets.Value("string"),
        "answer_snac": datasets.Value("string"),
    },
    "spoken-alpaca-gpt4": {
        "instruction": datasets.Value("string"), "input": datasets.Value("string"), "output": datasets.Value("string"),
        "speech_input": datasets.Value("string"), "input_speaker": datasets.Value("string"),
        "output_speaker": datasets.Value("string"), "input_audio": datasets.Audio(), "output_audio": datasets.Audio(),
    },
    "llama-questions": {
        "question": datasets.Value("string"), "answer": datasets.Value("string"), "audio": datasets.Audio(),
    },
    "spoken-web-questions": {
        "url": datasets.Value("string"), "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")), "audio": datasets.Audio(sampling_rate=16000),
        "question_unit": datasets.List(datasets.Value("int64")),
    },
}
RATES = {"VoiceAssistant-400K": 24_000, "spoken-alpaca-gpt4": 22_050, "llama-questions": 16_000,
         "spoken-web-questions": 16_000}


def wav(rate: int, pitch: float, name: str) -> dict:
    """An undecoded audio value: a 0.1 s tone as 16-bit PCM WAV bytes."""
    t = np.arange(int(rate * CLIP_SECONDS)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return {"bytes": buffer.getvalue(), "path": name}


def voice_assistant_rows() -> dict:
    """Three conversations, one row per round (rounds count from "0" here); 3 first-turn rows."""
    rounds = [("0", "0"), ("0", "1"), ("1", "0"), ("2", "0"), ("2", "1"), ("2", "2")]
    rate = RATES["VoiceAssistant-400K"]
    return {
        "split_name": ["identity"] * 2 + ["general"] * 4,
        "index": [index for index, _ in rounds], "round": [turn for _, turn in rounds],
        "question": [f"Question {index}.{turn}: what is {int(index) + 2} plus {int(turn) + 2}?" for index, turn in rounds],
        "question_audio": [wav(rate, 220 + 40 * i, f"va_{i}.wav") for i in range(len(rounds))],
        "answer": [f"It is {int(index) + int(turn) + 4}." for index, turn in rounds],
        "answer_snac": ["#" + " ".join(str(4096 + i) for i in range(3))] * len(rounds),
    }


def spoken_alpaca_rows() -> dict:
    rate = RATES["spoken-alpaca-gpt4"]
    instructions = ["Give three tips for staying healthy.", "Summarise the text.", "Name a primary colour.",
                    "Translate to French."]
    inputs = ["", "Cats sleep for most of the day.", "", "Good morning"]
    return {
        "instruction": instructions, "input": inputs,
        "output": ["Eat well, sleep, move.", "Cats sleep a lot.", "Blue.", "Bonjour"],
        "speech_input": [f"{i} {x}".strip() for i, x in zip(instructions, inputs, strict=True)],
        "input_speaker": ["spk_a", "spk_b", "spk_a", "spk_c"], "output_speaker": ["spk_z"] * 4,
        "input_audio": [wav(rate, 300 + 50 * i, f"in_{i}.wav") for i in range(4)],
        "output_audio": [wav(rate, 600 + 50 * i, f"out_{i}.wav") for i in range(4)],
    }


def llama_questions_rows() -> dict:
    rate = RATES["llama-questions"]
    return {"question": ["What is the capital of France?", "How many legs does a spider have?", "Who wrote Hamlet?"],
            "answer": ["Paris", "eight", "William Shakespeare"],
            "audio": [wav(rate, 330 + 30 * i, f"lq_{i}.wav") for i in range(3)]}


def web_questions_rows() -> dict:
    rate = RATES["spoken-web-questions"]
    return {"url": [f"http://www.freebase.com/view/en/q{i}" for i in range(3)],
            "question": ["what is the capital of spain?", "who played luke skywalker?", "where is the eiffel tower?"],
            "answers": [["Madrid"], ["Mark Hamill", "Mark Richard Hamill"], ["Paris"]],
            "audio": [wav(rate, 350 + 30 * i, f"wq_{i}.wav") for i in range(3)],
            "question_unit": [[5, 17, 17, 230], [9, 9, 41], [77]]}


# The card keeps the data-files mapping only: a `dataset_info` block without its dtypes would not parse.
CARD = """---
configs:
- config_name: default
  data_files:
  - split: {split}
    path: {pattern}
---
Schema fixture of {hub_id} for speech-llama's tests (tiny synthetic rows; the real data set is on the Hub).
Columns, as on its card: {features}.
"""


def _card(hub_id: str, name: str, split: str, pattern: str) -> str:
    features = ", ".join(SCHEMAS[name])
    return CARD.format(features=features, split=split, pattern=pattern, hub_id=hub_id)


def as_dataset(name: str, rows: dict) -> datasets.Dataset:
    """The rows typed as the card says. Audio columns are written as {bytes, path} structs and then cast
    to `Audio` (datasets encodes `Audio` values only through torchcodec, which is not installed)."""
    audio = [column for column, feature in SCHEMAS[name].items() if isinstance(feature, datasets.Audio)]
    storage = {column: ({"bytes": datasets.Value("binary"), "path": datasets.Value("string")} if column in audio
                        else feature) for column, feature in SCHEMAS[name].items()}
    dataset = datasets.Dataset.from_dict(rows, features=datasets.Features(storage))
    for column in audio:
        dataset = dataset.cast_column(column, SCHEMAS[name][column])
    return dataset


def write_parquet(name: str, hub_id: str, split: str, rows: dict, root: Path) -> Path:
    """``data/{split}-00000-of-00001.parquet`` and a README card, as `push_to_hub` lays a repository out."""
    folder = root / name
    (folder / "data").mkdir(parents=True, exist_ok=True)
    dataset = as_dataset(name, rows)
    path = folder / "data" / f"{split}-00000-of-00001.parquet"
    dataset.to_parquet(str(path))
    (folder / "README.md").write_text(_card(hub_id, name, split, f"data/{split}-*"))
    return path


def write_arrow(name: str, hub_id: str, rows: dict, root: Path) -> Path:
    """``data-00000-of-00001.arrow`` at the repository root, as GSQA uploaded `save_to_disk` shards."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    dataset = as_dataset(name, rows)
    with tempfile.TemporaryDirectory() as staging:
        dataset.save_to_disk(staging)
        shutil.copy(Path(staging) / "data-00000-of-00001.arrow", folder / "data-00000-of-00001.arrow")
    (folder / "README.md").write_text(_card(hub_id, name, "train", "data-*.arrow"))
    return folder / "data-00000-of-00001.arrow"


def write_fixtures(root: Path = ROOT) -> list[Path]:
    return [
        write_parquet("VoiceAssistant-400K", "gpt-omni/VoiceAssistant-400K", "train", voice_assistant_rows(), root),
        write_arrow("spoken-alpaca-gpt4", "GSQA/spoken-alpaca-gpt4", spoken_alpaca_rows(), root),
        write_parquet("llama-questions", "fixie-ai/llama-questions", "test", llama_questions_rows(), root),
        write_parquet("spoken-web-questions", "chiyuanhsiao/spoken-web-questions", "test", web_questions_rows(), root),
    ]


if __name__ == "__main__":
    for written in write_fixtures(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(f"{written} ({written.stat().st_size} bytes)")
