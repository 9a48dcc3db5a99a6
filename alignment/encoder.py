"""The frozen Whisper encoder of a SpeechLlama folder, run on one clip at a time for the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class FrozenSpeechEncoder:
    """Encoder states of a model folder's Whisper encoder: the adaptor's input, cached per clip."""

    def __init__(self, model_dir: Path | None = None, *, model=None, processor=None, dtype: str = "float32"):
        """From a model folder (its encoder run in `dtype`), or from a model and processor already loaded."""
        if model_dir is not None:
            from speech_llama.generate import load_model

            model, processor = load_model(model_dir, dtype=dtype)
        if model is None or processor is None:
            raise ValueError("FrozenSpeechEncoder needs a model folder, or both model and processor")
        self.model, self.processor = model, processor

    @property
    def dtype(self) -> torch.dtype:
        return self.model.encoder.dtype

    @torch.no_grad()
    def states(self, samples: np.ndarray, where: str) -> np.ndarray:
        """16 kHz clip (n,) → (⌈T_mel / 2⌉, d_enc) fp16 encoder states of the clip alone."""
        features = self.processor.extract_speech_features([samples], where=where)
        input_features = torch.as_tensor(features["input_features"]).to(self.dtype)
        mask = torch.as_tensor(features["input_features_mask"])
        return self.model.encoder(input_features, mask)[0].to(torch.float16).numpy()
