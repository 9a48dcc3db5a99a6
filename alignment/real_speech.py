"""Real recorded speech to check recognition beyond synthetic voices: Asterisk's English prompts.

Debian's `asterisk-core-sounds-en-wav` (CC-BY-SA-3.0) holds ~560 prompts read by one real speaker
(Allison Smith), 8 kHz telephone band, with their transcripts. Too small to train on and never
trained on: a read-back check only. `asterisk_records` turns them into records (question = the
transcript, audio = the recording) for `speech-llama eval --task readback`; `ctc_wer_of_records`
scores the adaptor's own CTC transcript of the same clips.

    python -m alignment.real_speech --out runs/asterisk/data.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

from speech_llama.files import write_jsonl

SOUNDS_DIR = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
DEBIAN_PACKAGE = "asterisk-core-sounds-en-wav"
# Prompts a reader cannot say as written: tones in brackets, keypad symbols, digits, spelled-out codes.
UNSPEAKABLE = re.compile(r"[\[\]*#0-9/@<>=+_]")
MAX_SECONDS = 30.0  # Whisper's window: longer recordings are left out


def asterisk_prompts(sounds_dir: Path = SOUNDS_DIR, transcripts: Path = TRANSCRIPTS) -> list[tuple[Path, str]]:
    """(recording, transcript) of every prompt with a wav file of at most `MAX_SECONDS` and a transcript in plain words."""
    import soundfile

    if not transcripts.is_file():
        raise FileNotFoundError(f"{transcripts} is missing: install the recordings (Debian: apt-get install {DEBIAN_PACKAGE})")
    prompts = []
    with gzip.open(transcripts, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            name, separator, text = line.partition(":")
            text = " ".join(text.split())
            if line.startswith(";") or not separator or not text or UNSPEAKABLE.search(text):
                continue
            path = sounds_dir / f"{name.strip()}.wav"
            if path.is_file() and soundfile.info(str(path)).duration <= MAX_SECONDS:
                prompts.append((path, text))
    return prompts


def asterisk_records(out: Path) -> Path:
    """Write the prompts as records (question = transcript, audio = absolute path) to `out` (JSONL)."""
    rows = [{"question": text, "audio": str(path), "voice": "asterisk-allison"} for path, text in asterisk_prompts()]
    return write_jsonl(Path(out), rows)


def ctc_wer_of_records(model, processor, rows: list[dict]) -> tuple[float, list[str]]:
    """Best-path CTC WER of the model's adaptor on records' audio against their `question` text."""
    from alignment.encoder import FrozenSpeechEncoder
    from alignment.training import CachedClip, ctc_word_error_rate
    from speech_llama.audio import read_audio

    encoder = FrozenSpeechEncoder(model=model, processor=processor)
    clips = []
    for row in rows:
        audio = read_audio(row["audio"], where=f"{row['audio']}")
        ids = processor.tokenizer(row["question"], add_special_tokens=False)["input_ids"]
        clips.append(CachedClip(encoder.states(audio, row["audio"]), ids, row["question"]))
    return ctc_word_error_rate(model, processor.tokenizer, clips)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="records file to write (JSONL)")
    args = parser.parse_args(argv)
    print(f"wrote {asterisk_records(args.out)}")


if __name__ == "__main__":
    main()
