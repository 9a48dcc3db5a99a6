"""Shared fixtures: a tiny random model folder built once per test session."""

from __future__ import annotations

import numpy as np
import pytest

from speech_llama.generate import load_model
from speech_llama.presets import build_tiny_random


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_random(tmp_path_factory.mktemp("models") / "tiny-random")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, processor) of the tiny random model, project classes."""
    return load_model(tiny_model_dir)



@pytest.fixture(scope="session")
def offline_mini_dir(tmp_path_factory):
    """The real-weight preset (SmolLM2-135M-Instruct + Whisper tiny.en), built once per session."""
    from speech_llama.presets import build_offline_mini

    return build_offline_mini(tmp_path_factory.mktemp("models") / "offline-mini")


@pytest.fixture(scope="session")
def offline_mini(offline_mini_dir):
    return load_model(offline_mini_dir)
