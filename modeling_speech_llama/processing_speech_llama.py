"""SpeechLlamaProcessor: Whisper log-mel features + the LLM tokenizer with a `<speech>` placeholder.

Each `<speech>` in a prompt is expanded to N = ⌊⌈T_mel / 2⌉ / k⌋ placeholder tokens, the number of
adaptor frames its clip yields. Clips are not padded to 30 s: each is featurised alone (so a clip's
features do not depend on its batch) and right-padded to the longest clip, with a frame mask.

This file is uploaded as Hub remote code: it imports only from numpy, torch and `transformers`.
"""

import warnings

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
# LLaMA-Omni's instruction after the clip of a spoken question.
DEFAULT_SPEECH_INSTRUCTION = "\nPlease directly answer the questions in the user's speech."
SPEECH_SAMPLING_RATE = 16_000
MIN_SPEECH_SECONDS = 0.1


# Integer PCM as audio files and `scipy.io.wavfile.read` give it: full scale of each type.
PCM_FULL_SCALE = {np.dtype(np.int8): 128.0, np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0,
                  np.dtype(np.uint8): 128.0}


def pcm_to_float(samples: np.ndarray, where: str = "audio") -> np.ndarray:
    """Integer PCM (int8/16/32, or unsigned 8-bit centred on 128) → float32 in [-1, 1], as
    soundfile reads the same file; other integer types are refused (their scale is unknown)."""
    scale = PCM_FULL_SCALE.get(samples.dtype)
    if scale is None:
        raise ValueError(f"{where}: integer audio of dtype {samples.dtype} has no known PCM scale; "
                         "pass int16 / int32 / int8 / uint8 PCM or float samples in [-1, 1]")
    if samples.dtype.kind == "u":
        return (samples.astype(np.float32) - scale) / scale
    return (samples.astype(np.float64) / scale).astype(np.float32)


class SpeechLlamaProcessor(ProcessorMixin):
    r"""
    Feature extractor + tokenizer for [`SpeechLlamaForCausalLM`].

    Args:
        feature_extractor (`WhisperFeatureExtractor`): log-mel front end of the encoder.
        tokenizer (`PreTrainedTokenizerBase`): the LLM tokenizer; must already contain `speech_token`.
        chat_template (`str`, *optional*): defaults to the tokenizer's chat template.
        speech_token (`str`, *optional*, defaults to `"<speech>"`): the placeholder for one clip.
        downsample (`int`, *optional*, defaults to 5): the adaptor's k (must equal the model's).
        max_speech_seconds (`float`, *optional*, defaults to 30.0): the encoder's longest clip.
        system_prompt (`str`, *optional*): added by `apply_chat_template` when a conversation has none
            (LLaMA-Omni's system prompt by default).
        speech_instruction (`str`, *optional*): the text after `<speech>` in a spoken-question prompt
            (LLaMA-Omni's "Please directly answer the questions in the user's speech." by default;
            `""`: the clip alone, as a typed question stands alone in its text-input prompt).

    Call: `processor(text=[prompts], audio=[clip | None | [clips] per prompt] or None,
    sampling_rate=16000, return_tensors="pt", padding=True)` → `input_ids`, `attention_mask` and,
    when any clip is given, `input_features` (B_a, n_mels, T_mel) and `input_features_mask` (B_a, T_mel).
    Audio must be 16 kHz: float arrays in [-1, 1], or integer PCM (int16 as `scipy.io.wavfile.read`
    gives it, int32, int8, uint8), which is scaled to [-1, 1]; stereo is down-mixed with a warning;
    other rates are refused (resample first, e.g. `datasets.Audio(sampling_rate=16000)`).
    """

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        chat_template=None,
        speech_token: str = "<speech>",
        downsample: int = 5,
        max_speech_seconds: float = 30.0,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        speech_instruction: str = DEFAULT_SPEECH_INSTRUCTION,
    ):
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        self.speech_token = speech_token
        self.downsample = downsample
        self.max_speech_seconds = max_speech_seconds
        self.system_prompt = system_prompt
        if not isinstance(speech_instruction, str):
            raise ValueError(f"speech_instruction must be a string ('' for none), got {type(speech_instruction).__name__}")
        self.speech_instruction = speech_instruction
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        self.speech_token_id = self._require_speech_token()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Batched generation needs the prompts' ends aligned.
        tokenizer.padding_side = "left"

    def _require_speech_token(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(self.speech_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {self.speech_token!r} token; add it with "
                f"tokenizer.add_special_tokens({{'additional_special_tokens': [{self.speech_token!r}]}}) and resize "
                "the model's embeddings (speech-llama build does both)"
            )
        return token_id

    # --- audio ---
    def num_speech_tokens(self, num_samples: int) -> int:
        """N for a 16 kHz clip of `num_samples` samples (Whisper: 160-sample hop, last frame dropped)."""
        num_mel_frames = num_samples // self.feature_extractor.hop_length
        return ((num_mel_frames + 1) // 2) // self.downsample

    def check_speech_length(self, num_samples: int, where: str = "audio") -> None:
        """Raise a `ValueError` naming `where` unless a 16 kHz clip of `num_samples` samples fits the
        encoder (at most `max_speech_seconds`, at least one speech token)."""
        seconds = num_samples / SPEECH_SAMPLING_RATE
        if seconds > self.max_speech_seconds:
            raise ValueError(f"{where}: audio is {seconds:.1f} s long; the encoder accepts at most {self.max_speech_seconds:.0f} s")
        if self.num_speech_tokens(num_samples) < 1:
            raise ValueError(f"{where}: audio is {seconds * 1000:.0f} ms long; at least {MIN_SPEECH_SECONDS * 1000:.0f} ms is needed")

    def check_audio(self, clip, where: str = "audio") -> np.ndarray:
        """Validate one 16 kHz clip (what `__call__` checks) and return it as float32 mono (samples,)."""
        return self._check_clip(clip, where)

    def _check_clip(self, clip, where: str) -> np.ndarray:
        """Validate one clip and return it as float32 mono (samples,); integer PCM is scaled to [-1, 1]."""
        if isinstance(clip, torch.Tensor):
            clip = clip.detach().cpu().numpy()
        clip = np.asarray(clip)
        if clip.dtype.kind not in "fiu":
            raise ValueError(f"{where}: audio must be a numeric array, got dtype {clip.dtype}")
        if clip.dtype.kind in "iu":
            clip = pcm_to_float(clip, where)
        if clip.ndim == 2:
            channel_axis = int(np.argmin(clip.shape))
            warnings.warn(f"{where}: audio has {clip.shape[channel_axis]} channels (shape {clip.shape}); down-mixing to mono")
            clip = clip.mean(axis=channel_axis)
        elif clip.ndim != 1:
            raise ValueError(f"{where}: audio must be 1-D (samples,) or 2-D (samples, channels), got shape {clip.shape}")
        if clip.size == 0:
            raise ValueError(f"{where}: audio is empty (0 samples)")
        clip = clip.astype(np.float32)
        if not np.isfinite(clip).all():
            raise ValueError(f"{where}: audio contains NaN or infinite samples")
        self.check_speech_length(clip.size, where)
        return clip

    def extract_speech_features(self, clips: list, where: str = "audio") -> dict[str, np.ndarray]:
        """Validated 16 kHz clips → `input_features` (B_a, n_mels, T_max) + `input_features_mask` (B_a, T_max),
        without any prompt (e.g. for an encoder-side loss)."""
        if not clips:
            raise ValueError(f"{where}: no clips given")
        return self._featurize([self._check_clip(clip, f"{where}[{i}]") for i, clip in enumerate(clips)])

    def _featurize(self, clips: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Log-mel features of each clip alone, right-padded: (B_a, n_mels, T_max) + mask (B_a, T_max)."""
        features = [
            self.feature_extractor(
                clip, sampling_rate=SPEECH_SAMPLING_RATE, padding="longest", return_attention_mask=False, return_tensors="np"
            )["input_features"][0]
            for clip in clips
        ]
        longest = max(f.shape[-1] for f in features)
        n_mels = features[0].shape[0]
        batch = np.zeros((len(features), n_mels, longest), dtype=np.float32)
        mask = np.zeros((len(features), longest), dtype=np.int64)
        for i, f in enumerate(features):
            batch[i, :, : f.shape[-1]] = f
            mask[i, : f.shape[-1]] = 1
        return {"input_features": batch, "input_features_mask": mask}

    def _clips_per_prompt(self, texts: list[str], audio) -> list[list]:
        """Align `audio` with the prompts: one entry per prompt, each None, a clip or a list of clips."""
        if audio is None:
            return [[] for _ in texts]
        if len(texts) == 1 and not isinstance(audio, (list, tuple)):
            audio = [audio]
        if len(audio) != len(texts):
            raise ValueError(f"got {len(texts)} prompts but {len(audio)} audio entries; pass one entry (a clip, a list of clips or None) per prompt")
        per_prompt = []
        for entry in audio:
            if entry is None:
                per_prompt.append([])
            elif isinstance(entry, (list, tuple)):
                per_prompt.append(list(entry))
            else:
                per_prompt.append([entry])
        return per_prompt

    # --- main entry ---
    def __call__(
        self,
        text=None,
        audio=None,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        padding=True,
        **kwargs,
    ) -> BatchFeature:
        """Tokenise prompts, expanding each `<speech>` to its clip's placeholder count.

        Returns a `BatchFeature` with `input_ids`/`attention_mask` (B, L) and, when clips are given,
        `input_features` (B_a, n_mels, T_mel) and `input_features_mask` (B_a, T_mel) in prompt order.
        """
        if text is None:
            raise ValueError("text is required: pass the prompt(s), with one <speech> per clip")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a list of strings")
        clips_per_prompt = self._clips_per_prompt(texts, audio)
        if any(clips_per_prompt):
            if sampling_rate is None:
                warnings.warn("sampling_rate not given; assuming 16000 Hz")
            elif sampling_rate != SPEECH_SAMPLING_RATE:
                raise ValueError(
                    f"audio sampling rate is {sampling_rate} Hz; the Whisper encoder needs {SPEECH_SAMPLING_RATE} Hz. "
                    "Resample first (e.g. datasets.Audio(sampling_rate=16000) or scipy.signal.resample_poly)"
                )

        expanded_texts, clips = [], []
        for index, (prompt, prompt_clips) in enumerate(zip(texts, clips_per_prompt)):
            num_placeholders = prompt.count(self.speech_token)
            if num_placeholders != len(prompt_clips):
                raise ValueError(
                    f"prompt {index} has {num_placeholders} {self.speech_token} token(s) but {len(prompt_clips)} audio clip(s)"
                )
            pieces = prompt.split(self.speech_token)
            expanded = pieces[0]
            for clip_index, (clip, rest) in enumerate(zip(prompt_clips, pieces[1:])):
                clip = self._check_clip(clip, where=f"prompt {index}, clip {clip_index}")
                clips.append(clip)
                expanded += self.speech_token * self.num_speech_tokens(clip.size) + rest
            expanded_texts.append(expanded)

        kwargs.setdefault("add_special_tokens", False)
        encoding = self.tokenizer(expanded_texts, padding=padding, return_tensors=return_tensors, **kwargs)
        data = dict(encoding)
        if clips:
            data.update(self._featurize(clips))
        return BatchFeature(data=data, tensor_type=return_tensors)

    # --- chat ---
    def to_chat_messages(self, messages: list[dict], add_system_prompt: bool = True) -> list[dict]:
        """HF multimodal messages → plain-string messages with `<speech>` where an audio item stands."""
        plain = []
        for turn, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str):
                text = content
            elif isinstance(content, list):
                text = "".join(self._content_item_text(item, turn) for item in content)
            else:
                raise ValueError(f"message {turn}: content must be a string or a list of content items, got {type(content).__name__}")
            plain.append({"role": message["role"], "content": text})
        if add_system_prompt and self.system_prompt and (not plain or plain[0]["role"] != "system"):
            plain.insert(0, {"role": "system", "content": self.system_prompt})
        return plain

    def _content_item_text(self, item, turn: int) -> str:
        if isinstance(item, str):
            return item
        kind = item.get("type")
        if kind == "audio":
            return self.speech_token
        if kind == "text":
            return item["text"]
        raise ValueError(f"message {turn}: unsupported content item type {kind!r} (expected 'audio' or 'text')")

    def apply_chat_template(
        self,
        conversation,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        add_system_prompt: bool = True,
        **kwargs,
    ):
        """Render one conversation (list of messages) or a batch of them with the LLM's chat template.

        Audio content items (`{"type": "audio"}`) become `<speech>`; LLaMA-Omni's system prompt is
        added unless the conversation has one. With `tokenize=True`, the clips given as
        `{"type": "audio", "audio": array}` are featurised too and a `BatchFeature` is returned.
        """
        is_batch = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if is_batch else [conversation]
        rendered = [
            self.tokenizer.apply_chat_template(
                self.to_chat_messages(conv, add_system_prompt=add_system_prompt),
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
            for conv in conversations
        ]
        if not tokenize:
            return rendered if is_batch else rendered[0]
        audio = [self._audio_items(conv) or None for conv in conversations]
        return self(text=rendered, audio=audio if any(audio) else None, sampling_rate=SPEECH_SAMPLING_RATE, **kwargs)

    @staticmethod
    def _audio_items(conversation) -> list:
        clips = []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, list):
                for item in content:
                    if isinstance(item, dict) and item.get("type") == "audio":
                        if "audio" not in item:
                            raise ValueError("tokenize=True needs the clip in each audio item: {'type': 'audio', 'audio': array}")
                        clips.append(item["audio"])
        return clips

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "input_features", "input_features_mask"]


SpeechLlamaProcessor.register_for_auto_class()

__all__ = ["SpeechLlamaProcessor", "DEFAULT_SYSTEM_PROMPT", "pcm_to_float"]
