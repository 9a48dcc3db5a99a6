"""Consent for a model folder's own code (transformers' `trust_remote_code`).

The project's tools never import a folder's `configuration_/modeling_/processing_speech_llama.py`:
the model, its config and the processor come from the installed `modeling_speech_llama` package.
The only place a folder could still run code of its own is the processor's parts: an `auto_map`
entry in `tokenizer_config.json`, `processor_config.json` or `preprocessor_config.json` that
names a module in the folder for `AutoTokenizer` / `AutoFeatureExtractor`. That code runs only
with consent (`--trust-remote-code`, or `trust_folder(path)` in-process); without it the
transformers class named in the same config is used and a warning names the entry not run, or,
where there is no such class, loading stops with a one-line error that says how to consent.

Folders `speech-llama build` and the trainers write carry only the `auto_map` entries listed in
`OWN_AUTO_MAP` (pointing at the three remote-code files, which our loaders do not import), so they
load without the flag and without a warning.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger("speech_llama")

# The auto_map entries this package writes into a model folder (config.json, processor and tokenizer configs).
OWN_AUTO_MAP = {
    "AutoConfig": "configuration_speech_llama.SpeechLlamaConfig",
    "AutoModel": "modeling_speech_llama.SpeechLlamaForCausalLM",
    "AutoModelForCausalLM": "modeling_speech_llama.SpeechLlamaForCausalLM",
    "AutoProcessor": "processing_speech_llama.SpeechLlamaProcessor",
}
CONFIG_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")

_trusted: set[Path] = set()


class RemoteCodeError(ValueError):
    """A folder needs its own code to load and the user has not consented."""


def trust_folder(folder: str | Path) -> None:
    """Record consent (for this process) to run `folder`'s own code, as `--trust-remote-code` does."""
    _trusted.add(Path(folder).resolve())


def is_trusted(folder: str | Path) -> bool:
    return Path(folder).resolve() in _trusted


def _auto_map_entries(value, where: str):
    """(where, auto class, reference) for every auto_map in a config dict, nested ones included."""
    if isinstance(value, dict):
        auto_map = value.get("auto_map")
        if isinstance(auto_map, dict):
            for auto_class, reference in auto_map.items():
                references = reference if isinstance(reference, (list, tuple)) else [reference]
                for ref in references:
                    if ref is not None:
                        yield where, str(auto_class), str(ref)
        for key, inner in value.items():
            if key != "auto_map" and isinstance(inner, dict):
                yield from _auto_map_entries(inner, f"{where} → {key}")


def foreign_code(folder: str | Path) -> list[str]:
    """The folder's auto_map entries that are not the ones this package writes, as
    ``'tokenizer_config.json: AutoTokenizer → evil.Tokenizer'`` (empty for our own folders)."""
    folder = Path(folder)
    found = []
    for name in CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable JSON file ({error})") from error
        for where, auto_class, reference in _auto_map_entries(config, name):
            if OWN_AUTO_MAP.get(auto_class) != reference:
                found.append(f"{where}: {auto_class} → {reference}")
    return found


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """`--trust-remote-code` for every command that loads a model folder."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model folder's own tokenizer / feature-extractor code (its auto_map) to run; "
                             "folders written by speech-llama need none")


def load_processor(folder: str | Path, trust_remote_code: bool | None = None):
    """`SpeechLlamaProcessor` of a model folder; the folder's own tokenizer / feature-extractor code
    runs only when `trust_remote_code` is True (None: consent given with `trust_folder`)."""
    from modeling_speech_llama import SpeechLlamaProcessor

    trusted = is_trusted(folder) if trust_remote_code is None else bool(trust_remote_code)
    foreign = foreign_code(folder)
    if foreign and not trusted:
        logger.warning("%s names code of its own (%s); it is not run (pass --trust-remote-code to run it): "
                       "the transformers classes named in its configs are used", folder, "; ".join(foreign))
    try:
        return SpeechLlamaProcessor.from_pretrained(folder, trust_remote_code=trusted)
    except ValueError as error:
        if not trusted and "custom code" in str(error):
            raise RemoteCodeError(
                f"{folder}: its tokenizer or feature extractor exists only as code in the folder "
                f"({'; '.join(foreign) or 'auto_map'}); speech-llama runs a folder's code only with "
                "--trust-remote-code (read that code first)"
            ) from None
        raise


__all__ = ["OWN_AUTO_MAP", "add_trust_argument", "RemoteCodeError", "foreign_code", "is_trusted", "load_processor", "trust_folder"]
