"""Configuration of SpeechLlama: a Whisper encoder, a k-frame concat adaptor and a LLaMA-style LLM.

This file is uploaded as Hub remote code: it imports only from `transformers` and its own folder.
"""

from transformers import AutoConfig, PretrainedConfig, WhisperConfig


ADAPTOR_OUTPUTS = ("linear", "embedding_mixture")


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
        adaptor_output (`str`, *optional*, defaults to `"linear"`):
            What the LLM reads at the speech positions: `"linear"` (the adaptor MLP's output, LLaMA-Omni) or
            `"embedding_mixture"` (the posterior-weighted sum of the LLM's own token embeddings under a
            cosine head over its vocabulary, `<speech>` as the CTC blank; LegoSLM).
        adaptor_logit_scale (`float`, *optional*, defaults to 30.0):
            s in logits_v = s · cos(h, E_v), the adaptor's head over the LLM vocabulary.
        adaptor_mixture_temperature (`float`, *optional*, defaults to 1.0):
            Softmax temperature of the embedding mixture (lower: closer to one token per frame).
        adaptor_collapse_repeats (`bool`, *optional*, defaults to `False`):
            Embedding mixture only: frames whose best token is the blank or repeats the previous frame's
            read `blank_embedding`, so each CTC segment reaches the LLM once (best-path collapse, N kept).
        adaptor_learned_blank (`bool`, *optional*, defaults to `False`):
            Score the CTC blank against a learned direction `blank_query` instead of the `<speech>` row of the
            embeddings (that row is close to the mean embedding, so under the cosine head the blank never wins).
        adaptor_mask_silent_frames (`bool`, *optional*, defaults to `False`):
            With `adaptor_collapse_repeats`: the frames that read `blank_embedding` (blank or repeated best
            token) are masked out of the LLM's attention and take no position, so the LLM reads each CTC
            segment as one token in an unbroken sequence, as it reads text (N placeholders are kept).

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
        adaptor_output: str = "linear",
        adaptor_logit_scale: float = 30.0,
        adaptor_mixture_temperature: float = 1.0,
        adaptor_collapse_repeats: bool = False,
        adaptor_learned_blank: bool = False,
        adaptor_mask_silent_frames: bool = False,
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
        check_adaptor_output(adaptor_output, speech_token_id, adaptor_mixture_temperature)
        check_silent_frames(adaptor_mask_silent_frames, adaptor_output, adaptor_collapse_repeats)
        self.adaptor_output = adaptor_output
        self.adaptor_logit_scale = adaptor_logit_scale
        self.adaptor_mixture_temperature = adaptor_mixture_temperature
        self.adaptor_collapse_repeats = adaptor_collapse_repeats
        self.adaptor_learned_blank = adaptor_learned_blank
        self.adaptor_mask_silent_frames = adaptor_mask_silent_frames
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    @property
    def max_speech_seconds(self) -> float:
        """Longest clip the encoder accepts: `max_source_positions` frames of 20 ms."""
        return self.encoder_config.max_source_positions * 0.02


def check_adaptor_output(adaptor_output: str, speech_token_id: int | None, adaptor_mixture_temperature: float) -> None:
    """Raise ValueError for an invalid adaptor output mode (also checked when the model is built: values
    passed to `from_pretrained(..., adaptor_output=...)` are set on the config after `__init__`)."""
    if adaptor_output not in ADAPTOR_OUTPUTS:
        raise ValueError(f"adaptor_output must be one of {ADAPTOR_OUTPUTS}, got {adaptor_output!r}")
    if adaptor_output == "embedding_mixture" and speech_token_id is None:
        raise ValueError("adaptor_output='embedding_mixture' needs speech_token_id (the CTC blank)")
    if adaptor_mixture_temperature <= 0:
        raise ValueError(f"adaptor_mixture_temperature must be > 0, got {adaptor_mixture_temperature}")


def check_silent_frames(mask_silent_frames: bool, adaptor_output: str, collapse_repeats: bool) -> None:
    """Raise ValueError when silent frames are to be masked but the adaptor does not mark any."""
    if mask_silent_frames and not (adaptor_output == "embedding_mixture" and collapse_repeats):
        raise ValueError("adaptor_mask_silent_frames=True needs adaptor_output='embedding_mixture' and "
                         f"adaptor_collapse_repeats=True (got {adaptor_output!r}, collapse_repeats={collapse_repeats})")


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
