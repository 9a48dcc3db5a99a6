"""Trained weights shipped in the repository: a safetensors file beside a manifest (recipe, corpus,
code version, figures, sha256), verified before use. The aligned adaptor (`alignment.release`) and
the Stage-1 LoRA model (`trainers.release`) are both shipped this way."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import torch

MANIFEST_FILE = "manifest.json"


class ReleaseError(ValueError):
    """A shipped release is missing a file, fails its checksum, or does not fit the model."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """The checkout's commit (with `+dirty` when it has uncommitted changes), or "unknown" outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def file_entry(path: Path) -> dict:
    """The manifest's record of one shipped file: its sha256 and size."""
    return {"sha256": sha256_of(path), "bytes": Path(path).stat().st_size}


def release_available(folder: Path, weights_file: str) -> bool:
    """Whether `folder` holds a manifest and its weights file."""
    return (Path(folder) / MANIFEST_FILE).is_file() and (Path(folder) / weights_file).is_file()


def read_verified(folder: Path, weights_file: str, expected_name: str, rebuild: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict in fp32, manifest) of the release in `folder`, its checksum verified first.

    Raises `ReleaseError` naming the file when one is missing (`rebuild`: the command that makes it
    again), the manifest is not one, the checksum differs, or the release's recipe name is not
    `expected_name`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest_path, weights_path = folder / MANIFEST_FILE, folder / weights_file
    for path in (manifest_path, weights_path):
        if not path.is_file():
            raise ReleaseError(f"{path} is missing: the release is incomplete (restore it with git, or rebuild it "
                               f"with `{rebuild}`)")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"][weights_file]["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ReleaseError(f"{manifest_path}: not a release manifest ({error})") from None
    actual = sha256_of(weights_path)
    if actual != expected:
        raise ReleaseError(f"{weights_path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}… "
                           "(a Git LFS pointer or a damaged file?)")
    if manifest.get("name") != expected_name:
        raise ReleaseError(f"{manifest_path}: release {manifest.get('name')!r} was built with another recipe than "
                           f"today's {expected_name!r}")
    return {name: tensor.float() for name, tensor in load_file(str(weights_path)).items()}, manifest


def record_figures(folder: Path, figures: dict[str, str]) -> dict:
    """Add figures measured after the release was written (held-out accuracies, …) to its manifest;
    the weights and their checksum are untouched. Returns the manifest."""
    from .files import atomic_write_json

    path = Path(folder) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["figures"] = {**manifest.get("figures", {}), **figures}
    atomic_write_json(path, manifest)
    return manifest


__all__ = ["MANIFEST_FILE", "ReleaseError", "code_version", "file_entry", "read_verified", "record_figures",
           "release_available", "sha256_of"]
