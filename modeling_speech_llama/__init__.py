from .configuration_speech_llama import SpeechLlamaConfig
from .modeling_speech_llama import (
    SpeechAdaptor,
    SpeechLlamaForCausalLM,
    SpeechLlamaPreTrainedModel,
    SpeechLlamaWhisperEncoder,
    speech_token_count,
)
from .processing_speech_llama import SpeechLlamaProcessor


__all__ = [
    "SpeechAdaptor",
    "SpeechLlamaConfig",
    "SpeechLlamaForCausalLM",
    "SpeechLlamaPreTrainedModel",
    "SpeechLlamaProcessor",
    "SpeechLlamaWhisperEncoder",
    "speech_token_count",
]
