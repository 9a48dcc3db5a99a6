"""Configuration of SpeechLlama: a Whisper encoder, a k-frame concat adaptor and a LLaMA-style LLM.

This file is uploaded as Hub remote code: it imports only from `transformers` and its own folder.
"""

from transformers import AutoConfig, PretrainedConfig, WhisperConfig


ADAPTOR_TYPES = ("linear", "ctc_embedding_mixture")
# config.json files written before `adaptor_type` carry these four switches instead; only their all-off
# and all-on settings were ever shipped, and those are the two adaptor types.
SWITCHES_OFF = {"adaptor_output": "linear", "adaptor_learned_blank": False, "adaptor_collapse_repeats": False,
                "adaptor_mask_silent_frames": False}
SWITCHES_ON = {"adaptor_output": "embedding_mixture", "adaptor_learned_blank": True, "adaptor_collapse_repeats": True,
               "adaptor_mask_silent_frames": True}


class SpeechLlamaConfig(PretrainedConfig):
    r"""
    Configuration of [`SpeechLlamaForCausalLM`] (LLaMA-Omni Stage 1 layout).

    Args:
        encoder_config (`dict` or `WhisperConfig`, *optional*):
            Config of the speech encoder. Only the encoder half of Whisper is instantiated.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the causal LLM (`model_type` "llama" or any `AutoModelForCausalLM` type).
        adaptor_downsample (`int`, *optional*, defaults to 5):
            k: number of consecutive encoder frames concatenated into one LLM position.
        adaptor_hidden_size (`int`, *optional*, defaults to 2048):
            Width of the adaptor's hidden layer (Linear(d_enc·k → hidden) → ReLU → Linear(hidden → d_llm)).
        speech_token_id (`int`, *optional*):
            Id of the `<speech>` placeholder token in the LLM vocabulary.
        freeze_encoder (`bool`, *optional*, defaults to `True`):
            Keep the Whisper encoder frozen (LLaMA-Omni Stage 1): no gradients, run under `no_grad`.
        adaptor_type (`str`, *optional*, defaults to `"linear"`):
            What the LLM reads at the N speech positions of a clip, given the adaptor MLP's output h (B, N, d_llm):

            - `"linear"`: h itself (LLaMA-Omni).
            - `"ctc_embedding_mixture"` (LegoSLM): a CTC head over the LLM's vocabulary scores h against every
              row E_v of the LLM's input embeddings (V, d_llm), logits_v = s · cos(h, E_v) (B, N, V), with the
              `<speech>` id (`speech_token_id`, required) as the CTC blank, scored against a learned direction
              `blank_query` (d_llm,) instead of its own row. A frame reads Σ_v p_v E_v with
              p = softmax(logits / T), the blank's mass going to a learned `blank_embedding` (d_llm,), so the
              inputs stay on the LLM's own token-embedding manifold. A silent frame (its best token is the blank
              or repeats the previous frame's) reads `blank_embedding` alone and is masked out of the LLM's
              attention and positions: the LLM reads each CTC segment once, in an unbroken sequence, as it
              reads text. The processor's N placeholders are kept; the forward returns the attention mask it
              used (B, L_past + L), which `generate` extends.

            A config.json written with the former switches `adaptor_output`, `adaptor_learned_blank`,
            `adaptor_collapse_repeats` and `adaptor_mask_silent_frames` loads: all off (or absent) is `"linear"`,
            all on (`adaptor_output="embedding_mixture"`) is `"ctc_embedding_mixture"`; other settings are refused.
        adaptor_logit_scale (`float`, *optional*, defaults to 30.0):
            s in logits_v = s · cos(h, E_v), the adaptor's head over the LLM vocabulary.
        adaptor_mixture_temperature (`float`, *optional*, defaults to 1.0):
            Softmax temperature of the embedding mixture (lower: closer to one token per frame).

    Example:

    ```python
    >>> from transformers import LlamaConfig, WhisperConfig
    >>> config = SpeechLlamaConfig(encoder_config=WhisperConfig().to_dict(), text_config=LlamaConfig().to_dict())
    ```
    """

    model_type = "speech_llama"
    sub_configs = {"encoder_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        encoder_config=None,
        text_config=None,
        adaptor_downsample: int = 5,
        adaptor_hidden_size: int = 2048,
        speech_token_id: int | None = None,
        freeze_encoder: bool = True,
        adaptor_type: str | None = None,
        adaptor_logit_scale: float = 30.0,
        adaptor_mixture_temperature: float = 1.0,
        **kwargs,
    ):
        self.encoder_config = _as_config(encoder_config, default_model_type="whisper")
        self.text_config = _as_config(text_config, default_model_type="llama")
        if adaptor_downsample < 1:
            raise ValueError(f"adaptor_downsample must be >= 1, got {adaptor_downsample}")
        self.adaptor_downsample = adaptor_downsample
        self.adaptor_hidden_size = adaptor_hidden_size
        self.speech_token_id = speech_token_id
        self.freeze_encoder = freeze_encoder
        # Popped, so that they are neither kept as attributes nor written back to config.json.
        switches = {key: kwargs.pop(key) for key in SWITCHES_OFF if key in kwargs}
        if switches:
            from_switches = adaptor_type_from_switches(switches)
            if adaptor_type is not None and adaptor_type != from_switches:
                raise ValueError(f"adaptor_type={adaptor_type!r} contradicts the former adaptor switches {switches} "
                                 f"(they mean adaptor_type={from_switches!r}); pass adaptor_type alone")
            adaptor_type = from_switches
        adaptor_type = "linear" if adaptor_type is None else adaptor_type
        check_adaptor_type(adaptor_type, speech_token_id, adaptor_mixture_temperature)
        self.adaptor_type = adaptor_type
        self.adaptor_logit_scale = adaptor_logit_scale
        self.adaptor_mixture_temperature = adaptor_mixture_temperature
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    @property
    def max_speech_seconds(self) -> float:
        """Longest clip the encoder accepts: `max_source_positions` frames of 20 ms."""
        return self.encoder_config.max_source_positions * 0.02


    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`from_pretrained(folder, **kwargs)` sets only kwargs that are config attributes; a former switch
        is none, so without this check it would be dropped (or reach the model's constructor) unread."""
        former = sorted(key for key in kwargs if key in SWITCHES_OFF)
        if former:
            raise ValueError(f"{', '.join(former)}: replaced by adaptor_type; pass adaptor_type, one of {ADAPTOR_TYPES}")
        return super().from_dict(config_dict, **kwargs)


def adaptor_type_from_switches(switches: dict) -> str:
    """The adaptor type that the former switches found in a config (absent ones off) describe."""
    settings = {key: switches.get(key, off) for key, off in SWITCHES_OFF.items()}
    if settings == SWITCHES_OFF:
        return "linear"
    if settings == SWITCHES_ON:
        return "ctc_embedding_mixture"
    raise ValueError(f"unsupported adaptor switches {switches}: supported are all off (adaptor_type='linear') or "
                     f"{SWITCHES_ON} (adaptor_type='ctc_embedding_mixture')")


def check_adaptor_type(adaptor_type: str, speech_token_id: int | None, adaptor_mixture_temperature: float) -> None:
    """Raise ValueError for an invalid adaptor setting (the model checks its config too: values passed to
    `from_pretrained(..., adaptor_type=...)` are set on the config after `__init__`)."""
    if adaptor_type not in ADAPTOR_TYPES:
        raise ValueError(f"adaptor_type must be one of {ADAPTOR_TYPES}, got {adaptor_type!r}")
    if adaptor_type == "ctc_embedding_mixture" and speech_token_id is None:
        raise ValueError("adaptor_type='ctc_embedding_mixture' needs speech_token_id (the CTC blank)")
    if adaptor_mixture_temperature <= 0:
        raise ValueError(f"adaptor_mixture_temperature must be > 0, got {adaptor_mixture_temperature}")


def _as_config(value, default_model_type: str) -> PretrainedConfig:
    """Accept a config object, a dict (as read from config.json) or None (library defaults)."""
    if isinstance(value, PretrainedConfig):
        return value
    if value is None:
        return WhisperConfig() if default_model_type == "whisper" else AutoConfig.for_model(default_model_type)
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", default_model_type)
        return AutoConfig.for_model(model_type, **value)
    raise TypeError(f"expected a dict or PretrainedConfig, got {type(value).__name__}")


SpeechLlamaConfig.register_for_auto_class()

__all__ = ["SpeechLlamaConfig"]
