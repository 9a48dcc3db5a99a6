""""Try it": the served model answers a typed question (T2T) or a spoken one (S2T), shown as it is generated.

The model is loaded once, on first use or in the background after the default content is ready
(`ModelHolder.preload`), and shared by all visitors; generation runs one request at a time, with
the project's batched generator (`speech_llama.batching`), on a worker thread that hands each new
piece of text to the page.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from .uploads import SpokenQuestion

logger = logging.getLogger("spaces_demo")

MAX_QUESTION_CHARS = 500


class NotReady(RuntimeError):
    """The model folder does not exist yet (the default content is still being built)."""


@dataclass(frozen=True)
class Answer:
    """What the UI shows for one question: the answer so far until `done`."""

    text: str
    task: str  # "T2T" or "S2T"
    seconds: float
    speech_seconds: float | None = None
    speech_tokens: int | None = None
    done: bool = True

    def markdown(self) -> str:
        if self.task == "S2T":
            source = f"S2T — {self.speech_seconds:.1f} s of speech → **{self.speech_tokens} speech tokens**"
        else:
            source = "T2T — typed question, 0 speech tokens"
        if not self.done:
            return f"**Answer** ({source}; answering… {self.seconds:.1f} s):\n\n{self.text}▌"
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
        """Load in a background thread (errors are logged; `answer_stream` reports them again)."""

        def load():
            try:
                self._load()
            except Exception:
                logger.exception("try it: preloading the model failed")

        threading.Thread(target=load, name="model-preload", daemon=True).start()

    def answer_stream(self, question: str | None, spoken: SpokenQuestion | None, max_new_tokens: int) -> Iterator[Answer]:
        """The greedy answer as it is generated (S2T when ``spoken`` is given, else T2T on ``question``):
        an `Answer` for each new piece of text, the last one `done`."""
        model, processor = self._load()
        started = time.perf_counter()
        audio = spoken.audio if spoken is not None else None
        answer = Answer(text="", task="T2T", seconds=0.0, done=False)
        if spoken is not None:
            answer = replace(answer, task="S2T", speech_seconds=spoken.seconds,
                             speech_tokens=processor.num_speech_tokens(len(spoken.audio)))
        pieces: queue.Queue[str | BaseException | None] = queue.Queue()
        # A worker generates, so the lock is never held across a yield: a visitor who leaves mid-answer
        # cannot keep the model from the others.
        threading.Thread(target=self._generate, args=(model, processor, question, audio, max_new_tokens, pieces),
                         name="try-it-answer", daemon=True).start()
        while (piece := pieces.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            answer = replace(answer, text=answer.text + piece, seconds=time.perf_counter() - started)
            yield answer
        yield replace(answer, seconds=time.perf_counter() - started, done=True)

    def _generate(self, model, processor, question: str | None, audio, max_new_tokens: int, pieces: queue.Queue) -> None:
        """Put each new piece of the answer's text on `pieces`, then None (or the error that stopped it)."""
        from speech_llama.batching import qa_batcher, steps_to_end
        from speech_llama.serving.chat import AnswerText

        try:
            with self._generate_lock:
                batcher = qa_batcher(model, processor, batch_size=1)
                batcher.add(0, (question, audio), max_new_tokens)
                text = AnswerText(processor)
                for step in steps_to_end(batcher):
                    for token in step.tokens:
                        piece = text.add(token.token) + (text.rest() if token.finish_reason else "")
                        if piece:
                            pieces.put(piece)
        except BaseException as error:  # whatever ends the worker must reach the page, or the visitor waits forever
            pieces.put(error)
            return
        pieces.put(None)
