"""SpeechLlama: Whisper encoder (frozen) → k-frame concat adaptor → LLaMA-style causal LM.

The LLaMA-Omni Stage-1 architecture. Speech features replace `<speech>` placeholder tokens in the
LLM's input embeddings (the Llava / Voxtral merge), so text-only, speech-only and mixed batches
all go through one `forward` and one `generate`.

This file is uploaded as Hub remote code: it imports only from torch, `transformers` and its own
folder (relative imports).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_speech_llama import SpeechLlamaConfig, check_adaptor_type


def speech_token_count(num_mel_frames: int, downsample: int) -> int:
    """N = ⌊⌈T_mel / 2⌉ / k⌋: LLM positions one clip of `num_mel_frames` log-mel frames occupies.

    Whisper's second convolution has stride 2 (⌈T_mel / 2⌉ encoder frames); the adaptor then
    concatenates k frames and drops the remainder. The processor uses the same formula.
    """
    return ((num_mel_frames + 1) // 2) // downsample


class SpeechAdaptor(nn.Module):
    """Concatenate k consecutive encoder frames, then Linear → ReLU → Linear (LLaMA-Omni).

    `config.adaptor_type` chooses what the LLM reads:
    - "linear": the MLP output itself (LLaMA-Omni).
    - "ctc_embedding_mixture": the MLP output h scores every row E_v of the LLM's input embeddings,
      logits_v = s · cos(h, E_v) (s = `adaptor_logit_scale`), the `<speech>` id being the CTC blank with
      logit s · cos(h, q) for a learned `blank_query` q (`<speech>`'s own row is close to the mean
      embedding, so under the cosine head it would never win). The LLM reads the posterior-weighted sum
      Σ_v p_v E_v with p = softmax(logits / `adaptor_mixture_temperature`) (LegoSLM), the blank's share
      of the mass going to the learned `blank_embedding`; a silent frame (`silent_frames`) reads
      `blank_embedding` alone, and the model masks it out of the LLM's attention.
    """

    def __init__(self, config: SpeechLlamaConfig):
        super().__init__()
        check_adaptor_type(config.adaptor_type, config.speech_token_id, config.adaptor_mixture_temperature)
        self.downsample = config.adaptor_downsample
        self.adaptor_type = config.adaptor_type
        self.logit_scale = config.adaptor_logit_scale
        self.temperature = config.adaptor_mixture_temperature
        self.blank_id = config.speech_token_id
        encoder_width = config.encoder_config.d_model
        width = config.text_config.hidden_size
        self.linear_1 = nn.Linear(encoder_width * self.downsample, config.adaptor_hidden_size)
        self.act = nn.ReLU()
        self.linear_2 = nn.Linear(config.adaptor_hidden_size, width)
        if self.adaptor_type == "ctc_embedding_mixture":
            self.blank_embedding = nn.Parameter(torch.zeros(width))
            self.blank_query = nn.Parameter(torch.randn(width) / width**0.5)

    def project(self, encoder_states: torch.Tensor) -> torch.Tensor:
        """(B, T_enc, d_enc) → (B, ⌊T_enc / k⌋, d_llm) MLP output; trailing frames that do not fill a group are dropped."""
        batch, frames, width = encoder_states.shape
        groups = frames // self.downsample
        stacked = encoder_states[:, : groups * self.downsample].reshape(batch, groups, width * self.downsample)
        return self.linear_2(self.act(self.linear_1(stacked)))

    def token_logits(self, projected: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        """(…, d_llm) MLP output × (V, d_llm) token embeddings → (…, V) scaled cosine logits (fp32); the
        blank's against `blank_query` in the embedding mixture, against `<speech>`'s row in "linear"
        (whose CTC alignment also reads this head)."""
        direction = nn.functional.normalize(projected.float(), dim=-1)
        cosine = direction @ nn.functional.normalize(token_embeddings.float(), dim=-1).T
        if self.adaptor_type == "ctc_embedding_mixture":
            blank = direction @ nn.functional.normalize(self.blank_query.float(), dim=0)
            cosine = cosine.index_copy(-1, torch.tensor([self.blank_id], device=cosine.device), blank.unsqueeze(-1))
        return self.logit_scale * cosine

    def silent_frames(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T, V) logits → (B, T) bool: the frame's best token is the blank or repeats the previous frame's."""
        best = logits.argmax(-1)
        repeated = torch.zeros_like(best, dtype=torch.bool)
        repeated[:, 1:] = best[:, 1:] == best[:, :-1]
        return repeated | (best == self.blank_id)

    def mixture(self, logits: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, V) logits → (B, T, d_llm) posterior-weighted token embeddings (blank mass → `blank_embedding`).

        A silent frame (`silent_frames`) reads `blank_embedding` alone: the LLM then sees each CTC segment
        once, as best-path CTC decoding would collapse it, while the frame count N stays the processor's.
        """
        probs = (logits / self.temperature).softmax(-1)
        blank = probs[..., self.blank_id : self.blank_id + 1]
        embeddings = token_embeddings.float().index_fill(0, torch.tensor([self.blank_id], device=probs.device), 0.0)
        mixed = probs @ embeddings + blank * self.blank_embedding.float()
        silent = self.silent_frames(logits).unsqueeze(-1)
        return torch.where(silent, self.blank_embedding.float().expand_as(mixed), mixed)

    def forward(self, encoder_states: torch.Tensor, token_embeddings: torch.Tensor | None = None,
                return_silent_frames: bool = False):
        """(B, T_enc, d_enc) → (B, N, d_llm) frames the LLM reads, N = ⌊T_enc / k⌋; with
        `return_silent_frames`, (frames, (B, N) bool silent frames, None for "linear").

        `token_embeddings` (V, d_llm), the LLM's input embedding matrix, is required for "ctc_embedding_mixture".
        """
        projected = self.project(encoder_states)
        if self.adaptor_type == "linear":
            return (projected, None) if return_silent_frames else projected
        if token_embeddings is None:
            raise ValueError("adaptor_type='ctc_embedding_mixture' needs the LLM's token embeddings (V, d_llm)")
        logits = self.token_logits(projected, token_embeddings)
        frames = self.mixture(logits, token_embeddings).to(projected.dtype)
        return (frames, self.silent_frames(logits)) if return_silent_frames else frames


@dataclass
class SpeechLlamaCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus `speech_embeds` (ΣN, d_llm), the adaptor outputs that were merged, and,
    when silent frames were masked ("ctc_embedding_mixture"), `attention_mask` (B, L_past + L): the
    mask the LLM attended with, which later decoding steps extend."""

    speech_embeds: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None


class SpeechLlamaWhisperEncoder(WhisperEncoder):
    """Whisper's encoder on clips shorter than 30 s, each masked to its own length.

    Same weights and state-dict keys as `WhisperEncoder`; only `forward` differs: Whisper pads
    every clip to 30 s, this one reads right-padded batches of any length up to 30 s.
    """

    def forward(self, input_features: torch.Tensor, input_features_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input_features: (B_a, n_mels, T_mel) log-mel features, right-padded.
            input_features_mask: (B_a, T_mel), 1 on real frames.
        Returns:
            (B_a, ⌈T_mel / 2⌉, d_enc) encoder states; frames past a clip's own length are garbage.

        Padded mel frames and conv outputs are zeroed so that the convolutions see exactly the zero
        padding an unbatched clip gets, and attention ignores padded keys: a clip's states do not
        depend on what it is batched with.
        """
        max_frames = self.config.max_source_positions
        mel_mask = input_features_mask.to(dtype=self.conv1.weight.dtype)[:, None, :]
        hidden = input_features.to(dtype=self.conv1.weight.dtype) * mel_mask
        hidden = nn.functional.gelu(self.conv1(hidden)) * mel_mask
        hidden = nn.functional.gelu(self.conv2(hidden)).permute(0, 2, 1)
        num_frames = hidden.shape[1]
        if num_frames > max_frames:
            raise ValueError(
                f"speech input has {input_features.shape[-1]} mel frames ({num_frames} encoder frames); the "
                f"encoder accepts at most {max_frames} encoder frames ({max_frames * 0.02:.0f} s of audio)"
            )
        hidden = hidden + self.embed_positions.weight[:num_frames].to(hidden.dtype)
        frame_mask = self.frame_mask(input_features_mask, num_frames)
        attention_bias = torch.zeros(frame_mask.shape, dtype=hidden.dtype, device=hidden.device)
        attention_bias = attention_bias.masked_fill(~frame_mask, torch.finfo(hidden.dtype).min)
        attention_bias = attention_bias[:, None, None, :].expand(-1, 1, num_frames, -1)
        for layer in self.layers:
            hidden = layer(hidden, attention_bias)
        return self.layer_norm(hidden)

    @staticmethod
    def frame_mask(input_features_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B_a, T_mel) mel mask → (B_a, T_enc) bool mask of valid encoder frames (⌈len / 2⌉ each)."""
        lengths = (input_features_mask.sum(-1) + 1) // 2
        return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]


class SpeechLlamaPreTrainedModel(PreTrainedModel):
    config_class = SpeechLlamaConfig
    config: SpeechLlamaConfig
    main_input_name = "input_ids"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["WhisperEncoderLayer", "LlamaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        if isinstance(module, SpeechAdaptor):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            for linear in (module.linear_1, module.linear_2):
                nn.init.normal_(linear.weight, mean=0.0, std=std)
                nn.init.zeros_(linear.bias)
            if hasattr(module, "blank_embedding"):
                nn.init.zeros_(module.blank_embedding)
            if hasattr(module, "blank_query"):
                nn.init.normal_(module.blank_query, mean=0.0, std=std)
        elif not isinstance(module, SpeechLlamaPreTrainedModel):
            super()._init_weights(module)


class SpeechLlamaForCausalLM(SpeechLlamaPreTrainedModel, GenerationMixin):
    """LLaMA-Omni Stage-1 speech LLM.

    Submodules: `encoder` ([`SpeechLlamaWhisperEncoder`], frozen), `adaptor` ([`SpeechAdaptor`]) and
    `language_model` (an `AutoModelForCausalLM`, e.g. `LlamaForCausalLM`).
    """

    def __init__(self, config: SpeechLlamaConfig):
        super().__init__(config)
        self.encoder = SpeechLlamaWhisperEncoder(config.encoder_config)
        self.encoder.requires_grad_(not config.freeze_encoder)
        self.adaptor = SpeechAdaptor(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if config.tie_word_embeddings:
            self._tied_weights_keys = {
                "language_model.lm_head.weight": "language_model.model.embed_tokens.weight"
            }
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loading replaces parameters (requires_grad=True): re-apply the encoder freeze."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.encoder.requires_grad_(not model.config.freeze_encoder)
        return loaded

    # --- embeddings (delegated, so resize/tie utilities work on the composite model) ---
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.language_model.set_output_embeddings(new_embeddings)

    # --- speech path ---
    def get_speech_features(self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder + adaptor for a batch of clips, flattened to the placeholder order.

        Args:
            input_features: (B_a, n_mels, T_mel) log-mel features (right-padded).
            input_features_mask: (B_a, T_mel), 1 on real frames; all ones when None.
        Returns:
            (ΣN_i, d_llm) with N_i = ⌊⌈T_mel_i / 2⌉ / k⌋, clip by clip in batch order.
        """
        return self.get_speech_frames(input_features, input_features_mask)[0]

    def get_speech_frames(self, input_features: torch.Tensor,
                          input_features_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`get_speech_features` plus (ΣN_i,) bool silent frames (None for "linear", which marks none)."""
        if input_features.dim() != 3:
            raise ValueError(f"input_features must be (batch, n_mels, frames), got shape {tuple(input_features.shape)}")
        n_mels = self.config.encoder_config.num_mel_bins
        if input_features.shape[1] != n_mels:
            raise ValueError(f"input_features has {input_features.shape[1]} mel bins, the encoder expects {n_mels}")
        if input_features_mask is None:
            input_features_mask = torch.ones(
                input_features.shape[0], input_features.shape[-1], dtype=torch.long, device=input_features.device
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            encoder_states = self.encoder(input_features, input_features_mask)
        speech_embeds, silent = self.adaptor(encoder_states, self.get_input_embeddings().weight, return_silent_frames=True)
        counts = [speech_token_count(int(n), self.config.adaptor_downsample) for n in input_features_mask.sum(-1).tolist()]
        frames = torch.cat([speech_embeds[i, :count] for i, count in enumerate(counts)], dim=0)
        if silent is None:
            return frames, None
        return frames, torch.cat([silent[i, :count] for i, count in enumerate(counts)], dim=0)

    def get_placeholder_mask(self, input_ids: torch.LongTensor, speech_embeds: torch.Tensor | None) -> torch.Tensor:
        """(B, L) bool mask of `<speech>` placeholders; raises when their count ≠ speech frames."""
        placeholder_mask = input_ids == self.config.speech_token_id
        num_placeholders = int(placeholder_mask.sum())
        num_frames = 0 if speech_embeds is None else speech_embeds.shape[0]
        if num_placeholders != num_frames:
            raise ValueError(
                f"speech placeholder/feature count mismatch: input_ids hold {num_placeholders} <speech> placeholder "
                f"tokens (id {self.config.speech_token_id}) but the speech input gives {num_frames} adaptor frames. "
                "Build inputs with SpeechLlamaProcessor so each <speech> is expanded to its clip's frame count."
            )
        return placeholder_mask

    def merge_speech_embeddings(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.Tensor | None,
        input_features_mask: torch.Tensor | None,
        speech_embeds: torch.Tensor | None = None,
        speech_silent_frames: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Token embeddings (B, L, d_llm) with speech frames scattered into the placeholder positions.

        The frames come from `input_features` (encoder + adaptor run here) or, already computed,
        from `speech_embeds` (ΣN, d_llm) with `speech_silent_frames` (ΣN,) bool or None, e.g. the
        adaptor applied to cached encoder states.
        Returns (inputs_embeds, speech_embeds or None, placeholder_mask (B, L), silent_mask (B, L) or None):
        `silent_mask` marks the placeholders whose frame is silent ("ctc_embedding_mixture" only).
        """
        inputs_embeds = self.get_input_embeddings()(input_ids)
        silent = speech_silent_frames
        if input_features is not None:
            if speech_embeds is not None:
                raise ValueError("pass input_features or speech_embeds, not both")
            speech_embeds, silent = self.get_speech_frames(input_features, input_features_mask)
        elif silent is not None and (speech_embeds is None or silent.shape != speech_embeds.shape[:1]):
            raise ValueError(f"speech_silent_frames must be (ΣN,) = {tuple(speech_embeds.shape[:1]) if speech_embeds is not None else '(0,)'}"
                             f" like speech_embeds' first dimension, got shape {tuple(silent.shape)}")
        elif silent is not None and self.config.adaptor_type == "linear":
            raise ValueError("speech_silent_frames given, but adaptor_type='linear' marks no silent frames")
        placeholder_mask = self.get_placeholder_mask(input_ids, speech_embeds)
        silent_mask = None
        if speech_embeds is not None:
            scatter_mask = placeholder_mask.unsqueeze(-1).expand_as(inputs_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(scatter_mask, speech_embeds.to(inputs_embeds.dtype))
            if silent is not None:
                silent_mask = torch.zeros_like(placeholder_mask).masked_scatter(placeholder_mask, silent)
        return inputs_embeds, speech_embeds, placeholder_mask, silent_mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        speech_embeds: torch.FloatTensor | None = None,
        speech_silent_frames: torch.BoolTensor | None = None,
        **kwargs,
    ) -> SpeechLlamaCausalLMOutput:
        r"""
        Args:
            input_ids: (B, L) token ids; each clip occupies N_i consecutive `<speech>` placeholders.
            input_features: (B_a, n_mels, T_mel) log-mel features of all clips in the batch, in
                placeholder order (B_a may differ from B: text-only rows have none, a row may have several).
            input_features_mask: (B_a, T_mel), 1 on real mel frames.
            attention_mask: (B, L) 1 on real tokens (left padding for generation).
            labels: (B, L) target ids, -100 where no loss is taken; placeholder positions are always ignored.
            speech_embeds: (ΣN, d_llm) adaptor frames already computed, in placeholder order, in place of
                `input_features` (e.g. from cached encoder states); `speech_silent_frames` (ΣN,) bool marks
                the silent ones (`SpeechAdaptor(..., return_silent_frames=True)`).
            Other arguments (cache / past_key_values, …) go to the language model unchanged.
        Returns:
            [`SpeechLlamaCausalLMOutput`] with `logits` (B, L, V): the `<speech>` logit is masked so it
            is never predicted.
        """
        placeholder_mask = silent_mask = None
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds)")
            inputs_embeds, speech_embeds, placeholder_mask, silent_mask = self.merge_speech_embeddings(
                input_ids, input_features, input_features_mask, speech_embeds, speech_silent_frames
            )
        elif input_features is not None or speech_embeds is not None:
            raise ValueError("input_features / speech_embeds cannot be combined with inputs_embeds: pass input_ids so they can be merged")

        if silent_mask is not None:
            # Silent frames leave the sequence: no attention to them, and positions count only the rest.
            attention_mask = self._without_silent_frames(attention_mask, silent_mask)
            position_ids = self._position_ids_from_mask(attention_mask, inputs_embeds.shape[1])
        if position_ids is None and isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            position_ids = self._position_ids_from_mask(attention_mask, inputs_embeds.shape[1])
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        logits = self._mask_speech_logit(outputs.logits)

        loss = None
        if labels is not None:
            if placeholder_mask is not None:
                labels = labels.masked_fill(placeholder_mask, -100)
            loss = self.language_model.loss_function(
                logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs
            )

        # The cache field is `cache` or `past_key_values` depending on the transformers 5.x release.
        passthrough = {key: value for key, value in outputs.items() if key not in ("loss", "logits")}
        return SpeechLlamaCausalLMOutput(loss=loss, logits=logits, speech_embeds=speech_embeds,
                                         attention_mask=attention_mask if silent_mask is not None else None, **passthrough)

    @staticmethod
    def _without_silent_frames(attention_mask: torch.Tensor | None, silent_mask: torch.Tensor) -> torch.Tensor:
        """(B, L_past + L) mask (or None: all ones) with the (B, L) silent placeholders set to 0."""
        if attention_mask is None:
            attention_mask = torch.ones(silent_mask.shape, dtype=torch.long, device=silent_mask.device)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            raise ValueError("adaptor_type='ctc_embedding_mixture' masks silent frames: it needs a 2-D attention_mask "
                             "(batch, length) or None")
        kept = torch.ones_like(attention_mask, dtype=torch.bool)
        kept[:, -silent_mask.shape[1]:] = ~silent_mask
        return attention_mask * kept.to(attention_mask.dtype)

    @staticmethod
    def _position_ids_from_mask(attention_mask: torch.Tensor, num_new_tokens: int) -> torch.LongTensor:
        """(B, L_past + L) mask → (B, L) positions counting real tokens only, so left padding does not shift them."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[:, -num_new_tokens:]

    def _mask_speech_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """The placeholder token is an input-only symbol; with tied embeddings it would get an output logit."""
        speech_token_id = self.config.speech_token_id
        if speech_token_id is None or speech_token_id >= logits.shape[-1]:
            return logits
        is_speech_column = torch.arange(logits.shape[-1], device=logits.device) == speech_token_id
        return logits.masked_fill(is_speech_column, torch.finfo(logits.dtype).min)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs: dict, *args, **kwargs) -> dict:
        """Later decoding steps extend the mask the prefill attended with (silent frames masked) and
        count positions from it; `generate` computed both from the prompt before the frames were known."""
        if getattr(outputs, "attention_mask", None) is not None:
            model_kwargs["attention_mask"] = outputs.attention_mask
            if model_kwargs.get("position_ids") is not None:
                model_kwargs["position_ids"] = self._position_ids_from_mask(outputs.attention_mask,
                                                                            outputs.attention_mask.shape[1])
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        """Speech features are consumed on the prefill step only; later steps read the KV cache."""
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in ("input_features", "input_features_mask", "speech_embeds", "speech_silent_frames"):
                model_inputs.pop(name, None)
        return model_inputs


SpeechLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "SpeechAdaptor",
    "SpeechLlamaForCausalLM",
    "SpeechLlamaPreTrainedModel",
    "SpeechLlamaWhisperEncoder",
    "speech_token_count",
]
