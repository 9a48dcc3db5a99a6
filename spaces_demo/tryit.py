""""Try it": the served model answers a typed question (T2T) or a spoken one (S2T).

The model is loaded once, on first use or in the background after the default content is ready
(`ModelHolder.preload`), and shared by all visitors; generation runs one request at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .uploads import SpokenQuestion

logger = logging.getLogger("spaces_demo")

MAX_QUESTION_CHARS = 500


class NotReady(RuntimeError):
    """The model folder does not exist yet (the default content is still being built)."""


@dataclass(frozen=True)
class Answer:
    """What the UI shows for one question."""

    text: str
    task: str  # "T2T" or "S2T"
    seconds: float
    speech_seconds: float | None = None
    speech_tokens: int | None = None

    def markdown(self) -> str:
        if self.task == "S2T":
            source = f"S2T — {self.speech_seconds:.1f} s of speech → **{self.speech_tokens} speech tokens**"
        else:
            source = "T2T — typed question, 0 speech tokens"
        answer = self.text if self.text else "_(the model produced no text)_"
        return f"**Answer** ({source}; {self.seconds:.1f} s):\n\n{answer}"


class ModelHolder:
    """Loads `speech_llama.generate.load_model(model_dir())` once and answers with it."""

    def __init__(self, model_dir: Callable[[], Path | None]):
        self._model_dir = model_dir
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._loaded = None

    def _load(self):
        with self._load_lock:
            if self._loaded is None:
                folder = self._model_dir()
                if folder is None or not (Path(folder) / "config.json").is_file():
                    raise NotReady("The model is still being built (see the status above); please try again in a minute.")
                from speech_llama.generate import load_model

                started = time.perf_counter()
                self._loaded = load_model(folder)
                logger.info("try it: loaded %s in %.1f s", folder, time.perf_counter() - started)
            return self._loaded

    def preload(self) -> None:
        """Load in a background thread (errors are logged; `answer` reports them again)."""

        def load():
            try:
                self._load()
            except Exception:
                logger.exception("try it: preloading the model failed")

        threading.Thread(target=load, name="model-preload", daemon=True).start()

    def answer(self, question: str | None, spoken: SpokenQuestion | None, max_new_tokens: int) -> Answer:
        """Greedy answer: S2T when ``spoken`` is given, else T2T on ``question``."""
        from speech_llama.generate import generate_answers

        model, processor = self._load()
        started = time.perf_counter()
        with self._generate_lock:
            if spoken is not None:
                text = generate_answers(model, processor, [None], [spoken.audio], max_new_tokens)[0]
                return Answer(
                    text=text, task="S2T", seconds=time.perf_counter() - started,
                    speech_seconds=spoken.seconds, speech_tokens=processor.num_speech_tokens(len(spoken.audio)),
                )
            text = generate_answers(model, processor, [question], None, max_new_tokens)[0]
        return Answer(text=text, task="T2T", seconds=time.perf_counter() - started)
