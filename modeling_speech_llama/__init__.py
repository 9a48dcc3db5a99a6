from .configuration_speech_llama import SpeechLlamaConfig
from .modeling_speech_llama import SpeechAdaptor, SpeechLlamaForCausalLM, SpeechLlamaPreTrainedModel, speech_token_count
from .processing_speech_llama import SpeechLlamaProcessor


__all__ = [
    "SpeechAdaptor",
    "SpeechLlamaConfig",
    "SpeechLlamaForCausalLM",
    "SpeechLlamaPreTrainedModel",
    "SpeechLlamaProcessor",
    "speech_token_count",
]
