"""Whisper's tokenizer, special tokens, config, generation config and processor for a converted
CTranslate2 model (from its bundled ``tokenizer.json`` and ``config.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .ct2_format import CTranslate2FormatError
from .whisper_names import WhisperDimensions


@dataclass(frozen=True)
class WhisperSpecialTokens:
    """Ids of Whisper's control tokens, read from the tokenizer (they differ .en vs multilingual)."""

    end_of_text: int
    start_of_transcript: int
    translate: int
    transcribe: int
    start_of_prev: int
    no_timestamps: int


def whisper_special_tokens(tokenizer) -> WhisperSpecialTokens:
    """Look up the control tokens; error if the tokenizer is not a Whisper one."""

    def token_id(token: str) -> int:
        index = tokenizer.convert_tokens_to_ids(token)
        # Whisper's unk token is <|endoftext|>, so an unknown token maps to its id.
        if index is None or (index == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise CTranslate2FormatError(f"tokenizer has no Whisper control token {token}")
        return index

    return WhisperSpecialTokens(
        end_of_text=token_id("<|endoftext|>"),
        start_of_transcript=token_id("<|startoftranscript|>"),
        translate=token_id("<|translate|>"),
        transcribe=token_id("<|transcribe|>"),
        start_of_prev=token_id("<|startofprev|>"),
        no_timestamps=token_id("<|notimestamps|>"),
    )


def whisper_tokenizer(tokenizer_json: Path, vocab_size: int):
    """``WhisperTokenizerFast`` from a bundled ``tokenizer.json``, completed to ``vocab_size``.

    CTranslate2 exports keep only the text and control tokens; transformers' Whisper tokenizer
    registers the control tokens as special (its timestamp decoding starts right after the last
    special id) and has the 0.02 s timestamp tokens ``<|0.00|>`` … appended after
    ``<|notimestamps|>``. We restore both so the tokenizer covers every model output id.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    added = json.loads(Path(tokenizer_json).read_text())["added_tokens"]
    specials = [token["content"] for token in sorted(added, key=lambda t: t["id"]) if token["special"]]
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        extra_special_tokens=specials,
        pad_token="<|endoftext|>",
        model_max_length=1024,
    )
    n_timestamps = vocab_size - len(tokenizer)
    if n_timestamps > 0:
        if len(tokenizer) != whisper_special_tokens(tokenizer).no_timestamps + 1:
            raise CTranslate2FormatError(
                f"{tokenizer_json}: tokenizer has {len(tokenizer)} tokens, model {vocab_size};"
                " the gap does not start after <|notimestamps|>, so it is not timestamps"
            )
        tokenizer.add_tokens(
            [
                AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False)
                for i in range(n_timestamps)
            ]
        )
    if len(tokenizer) != vocab_size:
        raise CTranslate2FormatError(
            f"{tokenizer_json}: tokenizer has {len(tokenizer)} tokens but the model {vocab_size}"
        )
    return tokenizer


def whisper_config(dims: WhisperDimensions, tokens: WhisperSpecialTokens, bundled: dict):
    """``WhisperConfig`` for the converted model.

    Args:
        bundled: the CTranslate2 folder's ``config.json`` (suppressed tokens, alignment heads).
    """
    from transformers import WhisperConfig

    return WhisperConfig(
        **vars(dims),
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        begin_suppress_tokens=bundled.get("suppress_ids_begin", [220, tokens.end_of_text]),
        suppress_tokens=bundled.get("suppress_ids"),
        tie_word_embeddings=True,
        activation_function="gelu",
        scale_embedding=False,
    )


def whisper_generation_config(config, tokens: WhisperSpecialTokens, bundled: dict, tokenizer):
    """``GenerationConfig`` matching OpenAI's checkpoints on the Hub.

    English-only models (vocab 51864) start from ``<|startoftranscript|><|notimestamps|>``.
    Multilingual ones (vocab 51865) get ``lang_to_id``/``task_to_id`` and default to English
    transcription: ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``; pass
    ``language=``/``task=`` to ``generate`` to change that.
    """
    from transformers import GenerationConfig

    is_multilingual = config.vocab_size >= 51865
    generation = GenerationConfig(
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        begin_suppress_tokens=config.begin_suppress_tokens,
        suppress_tokens=config.suppress_tokens,
        max_length=config.max_target_positions,
        no_timestamps_token_id=tokens.no_timestamps,
        prev_sot_token_id=tokens.start_of_prev,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=is_multilingual,
    )
    if "alignment_heads" in bundled:
        generation.alignment_heads = [list(pair) for pair in bundled["alignment_heads"]]
    if is_multilingual:
        language_ids = bundled.get("lang_ids") or []
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in language_ids}
        generation.task_to_id = {"transcribe": tokens.transcribe, "translate": tokens.translate}
        generation.language = "<|en|>"
        generation.task = "transcribe"
    return generation


def whisper_processor(tokenizer, num_mel_bins: int):
    """``WhisperProcessor`` = 16 kHz log-mel feature extractor + the converted tokenizer."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    return WhisperProcessor(WhisperFeatureExtractor(feature_size=num_mel_bins), tokenizer)
