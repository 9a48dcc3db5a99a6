"""The fast precision is decided per machine: bf16 only where the CPU runs it natively."""

from __future__ import annotations

import pytest
import torch

from apps.reproduce import experiments
from apps.reproduce.experiments import EXPERIMENT_PRESETS, for_this_machine
from speech_llama import precision
from alignment.training import AlignmentSettings
from alignment.distillation import DistillationSettings


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16 instructions."""
    def pretend(native: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    return pretend


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_is_bfloat16_only_on_a_cpu_that_runs_it(cpu_with, native, expected):
    cpu_with(native)
    assert precision.cpu_runs_bfloat16() is native
    assert precision.resolve_dtype_name("auto") == expected
    assert precision.resolve_dtype_name("auto", device="cuda") == "bfloat16"
    assert precision.resolve_dtype_name("float16") == "float16"


def test_amx_alone_counts_as_native(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.cpu_runs_bfloat16()


@pytest.mark.parametrize("native", [True, False])
def test_cpu_presets_resolve_their_precisions_for_this_machine(cpu_with, native):
    cpu_with(native)
    for name in ("cpu-mini", "cpu-mini-fast"):
        resolved = for_this_machine(EXPERIMENT_PRESETS[name])
        assert resolved.inference_dtype == ("bfloat16" if native else "float32")
        assert resolved.train_bf16 is native


def test_an_explicit_precision_is_kept(cpu_with):
    cpu_with(True)
    preset = experiments.replace(EXPERIMENT_PRESETS["cpu-mini"], inference_dtype="float32", train_bf16=False)
    resolved = for_this_machine(preset)
    assert (resolved.inference_dtype, resolved.train_bf16) == ("float32", False)
    gpu = for_this_machine(EXPERIMENT_PRESETS["gpu-1b"])
    assert gpu.inference_dtype == "float32" and gpu.train_bf16 is False and gpu.dtype == "bfloat16"


@pytest.mark.parametrize("native", [True, False])
def test_alignment_and_distillation_autocast_follow_the_cpu(cpu_with, native):
    cpu_with(native)
    assert AlignmentSettings().bf16 is native
    assert DistillationSettings().bf16 is native
    assert AlignmentSettings(bf16=True).bf16 is True
