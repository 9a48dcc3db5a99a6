"""The Space's artifact folder: the only place the UI reads from.

Every selector in the UI offers *labels* (paths relative to the folder, as found by a scan); a
label coming back from the browser is resolved by looking it up in a fresh scan, never by joining
it onto a path, so the UI cannot reach files outside the folder.

Layout (anything else in the folder is ignored):
- importance artifacts: any ``X.safetensors`` with an ``X.json`` summary beside it (``importance/``
  by default; the default content writes ``importance/<model>-text.safetensors``);
- deactivation results: any ``*.json`` holding ``fraction`` and ``ppl`` (``deactivation/``);
- checkpoints for |Δθ|: model folders (``config.json`` + ``model.safetensors`` or its index), e.g.
  the default ``offline-mini/`` and anything under ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ARTIFACTS = Path("runs/space")  # the folder `speech-llama demo` serves unless told otherwise
IMPORTANCE_DIR = "importance"
DEACTIVATION_DIR = "deactivation"
CHECKPOINTS_DIR = "checkpoints"
# Model folders and artifacts are looked for at most this deep below the folder.
MAX_DEPTH = 4


class NotInFolder(ValueError):
    """A label the UI sent is not (or no longer) in the artifact folder."""


@dataclass(frozen=True)
class ArtifactFolder:
    """Scans of one folder; every method re-reads the disk, so new files show up on refresh."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())

    def _files(self, pattern: str) -> list[Path]:
        """Files matching ``pattern`` up to `MAX_DEPTH` levels down, sorted, no hidden parts."""
        if not self.root.is_dir():
            return []
        found = []
        for directory, subdirs, files in os.walk(self.root):
            depth = len(Path(directory).relative_to(self.root).parts)
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if depth < MAX_DEPTH else []
            found += [Path(directory) / name for name in files if Path(name).match(pattern) and not name.startswith(".")]
        return sorted(found)

    def label(self, path: Path) -> str:
        """The relative path shown in the UI (POSIX separators, no suffix for artifacts)."""
        relative = path.relative_to(self.root)
        return relative.with_suffix("").as_posix() if path.suffix == ".safetensors" else relative.as_posix()

    def importance_artifacts(self) -> dict[str, Path]:
        """label → ``X.safetensors`` for every artifact with a readable summary holding ``layers``."""
        artifacts = {}
        for path in self._files("*.safetensors"):
            summary = _read_json(path.with_suffix(".json"))
            if isinstance(summary, dict) and isinstance(summary.get("layers"), list):
                artifacts[self.label(path)] = path
        return artifacts

    def deactivation_results(self) -> dict[str, Path]:
        """label → JSON file for every deactivation result (``fraction`` + ``ppl`` with a ``base``)."""
        results = {}
        for path in self._files("*.json"):
            data = _read_json(path)
            if isinstance(data, dict) and "fraction" in data and isinstance(data.get("ppl"), dict) and "base" in data["ppl"]:
                results[self.label(path)] = path
        return results

    def checkpoints(self) -> dict[str, Path]:
        """label → model folder, for every folder with ``config.json`` and safetensors weights."""
        folders = {}
        for config in self._files("config.json"):
            folder = config.parent
            if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
                folders[folder.relative_to(self.root).as_posix() or "."] = folder
        return folders

    def resolve(self, label: str | None, found: dict[str, Path], what: str) -> Path:
        """The path behind a label from the UI; a friendly error when it is unknown."""
        if not label:
            raise NotInFolder(f"Choose {what} first.")
        if label not in found:
            raise NotInFolder(f"“{label}” is not among the {what}s in the Space's folder (was it removed?). Reload the page.")
        return found[label]


def _read_json(path: Path):
    """Parsed JSON, or None when the file is missing or not JSON (such files are just not listed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
