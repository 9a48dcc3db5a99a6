"""The frozen Whisper encoder of a SpeechLlama folder, run on one clip at a time for the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class FrozenSpeechEncoder:
    """Encoder states of a model folder's Whisper encoder: the adaptor's input, cached per clip."""

    def __init__(self, model_dir: Path):
        from speech_llama.generate import load_model

        self.model, self.processor = load_model(model_dir)

    @torch.no_grad()
    def states(self, samples: np.ndarray, where: str) -> np.ndarray:
        """16 kHz clip (n,) → (⌈T_mel / 2⌉, d_enc) fp16 encoder states of the clip alone."""
        features = self.processor.extract_speech_features([samples], where=where)
        input_features = torch.as_tensor(features["input_features"])
        mask = torch.as_tensor(features["input_features_mask"])
        states = encoder_states(self.model, input_features, mask)
        return states[0].to(torch.float16).numpy()


def encoder_states(model, input_features: torch.Tensor, input_features_mask: torch.Tensor) -> torch.Tensor:
    """(B, n_mels, T_mel) → (B, ⌈T_mel / 2⌉, d_enc) through the model's variable-length encoder."""
    return model.encode_speech(input_features, input_features_mask)
