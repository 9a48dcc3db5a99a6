"""Shared fixtures: a tiny random model folder built once per test session."""

from __future__ import annotations

import numpy as np
import pytest

from speech_llama.build import build_tiny_random
from speech_llama.generate import load_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_random(tmp_path_factory.mktemp("models") / "tiny-random")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, processor) of the tiny random model, project classes."""
    return load_model(tiny_model_dir)

