"""The glibc allocator setting the CLI and the trainer apply at start-up."""

from __future__ import annotations

import platform
import sys

import pytest

from speech_llama.memory import reuse_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_are_accepted_by_glibc():
    assert reuse_freed_memory() is True


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert reuse_freed_memory() is False
