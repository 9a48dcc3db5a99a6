"""One thread owns the model and runs `ContinuousBatcher` steps over every active request.

Handlers `submit` prepared requests from any thread and get each request's tokens through its
listener, called on the scheduler thread. A request joins the running batch at the next step
(prefill, then one decode step with the others per token) and leaves at its end-of-turn token or
budget; `cancel` (a client that went away, a timeout) frees its slot at the next step. Between
steps the thread sleeps until there is work.

Bounds: at most `max_batch` sequences decode at once (the batcher's batch size) and at most
`max_batch + max_queue` requests are held in all; one more is refused with `QueueFull`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..batching import ContinuousBatcher, Token
from .chat import PreparedChat, chat_inputs

logger = logging.getLogger("speech_llama.serving")

# Called on the scheduler thread with each new token of its request, or once with the error that ended it.
Listener = Callable[[Token | Exception], None]


class QueueFull(RuntimeError):
    """Every slot and queue place is taken; the client should retry later."""


class SchedulerStopped(RuntimeError):
    """The server is shutting down; the request was not (or not fully) answered."""


@dataclass(frozen=True)
class Load:
    """Rows prefilled or decoding and requests not yet admitted (as of the last step), requests held in all (now)."""

    running: int = 0
    waiting: int = 0
    requests: int = 0


class Scheduler:
    """The model's only user: a thread that steps one continuous batch shared by all requests."""

    def __init__(self, model, processor, max_batch: int, max_queue: int):
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        # The batcher is stepped by the scheduler thread only; others may read its counts.
        self.batcher = ContinuousBatcher(model, processor, max_batch, functools.partial(chat_inputs, processor))
        self.max_batch, self.max_queue = max_batch, max_queue
        self._condition = threading.Condition()
        self._arrivals: list[tuple[int, PreparedChat]] = []
        self._cancelled: list[int] = []
        self._listeners: dict[int, Listener] = {}
        self._ids = itertools.count()
        self._batch_counts = (0, 0)  # the batcher's (running, waiting) after the last step
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="speech-llama-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the step under way, then end every held request with `SchedulerStopped`."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._condition:
            listeners, self._listeners = self._listeners, {}
        for listener in listeners.values():
            _call(listener, SchedulerStopped("the server is shutting down"))

    def submit(self, chat: PreparedChat, listener: Listener) -> int:
        """Queue a request; its id (for `cancel`). Raises `QueueFull` when `max_batch + max_queue` are held."""
        with self._condition:
            if self._stopping:
                raise SchedulerStopped("the server is shutting down")
            if len(self._listeners) >= self.max_batch + self.max_queue:
                raise QueueFull(f"{len(self._listeners)} requests are running or queued (at most {self.max_batch} "
                                f"decode at once, {self.max_queue} more wait); retry later")
            request = next(self._ids)
            self._listeners[request] = listener
            self._arrivals.append((request, chat))
            self._condition.notify()
        return request

    def cancel(self, request: int) -> None:
        """Stop answering `request` (no more tokens are delivered); its slot frees at the next step."""
        with self._condition:
            if self._listeners.pop(request, None) is not None:
                self._cancelled.append(request)
                self._condition.notify()

    def load(self) -> Load:
        with self._condition:
            running, waiting = self._batch_counts
            return Load(running, waiting + len(self._arrivals), len(self._listeners))

    # --- the scheduler thread ---------------------------------------------------------------

    def _run(self) -> None:
        while self._take_work():
            if self.batcher.busy:
                self._step()
            with self._condition:
                self._batch_counts = (self.batcher.running, self.batcher.waiting)

    def _take_work(self) -> bool:
        """Wait until there is something to do; move arrivals and cancellations into the batcher. False: stop."""
        with self._condition:
            while not (self._stopping or self._arrivals or self._cancelled or self.batcher.busy):
                self._condition.wait()
            if self._stopping:
                return False
            arrivals, self._arrivals = self._arrivals, []
            cancelled, self._cancelled = self._cancelled, []
        for request, chat in arrivals:
            try:
                self.batcher.add(request, (chat.prompt, chat.audio), chat.max_new_tokens)
            except ValueError as error:  # a budget the handler should have refused: this request only
                self._deliver(request, error, last=True)
        for request in cancelled:
            self.batcher.cancel(request)
        return True

    def _step(self) -> None:
        try:
            step = self.batcher.step()
        except Exception as error:  # a failed decode step leaves its rows' caches unusable: end those requests
            logger.exception("decode step failed; ending the %d running requests", self.batcher.running)
            for request in self.batcher.drop_running():
                self._deliver(request, error, last=True)
            return
        for request, error in step.failed.items():
            logger.error("prefill failed for request %d: %s", request, error)
            self._deliver(request, error, last=True)
        for token in step.tokens:
            self._deliver(token.request, token, last=token.finish_reason is not None)

    def _deliver(self, request: int, event: Token | Exception, last: bool) -> None:
        with self._condition:
            listener = self._listeners.pop(request, None) if last else self._listeners.get(request)
        if listener is not None:  # None: cancelled in the meantime
            _call(listener, event)


def _call(listener: Listener, event: Token | Exception) -> None:
    try:
        listener(event)
    except Exception:  # a listener's failure must not stop the thread that serves everyone
        logger.exception("a request's listener failed")


__all__ = ["Listener", "Load", "QueueFull", "Scheduler", "SchedulerStopped"]
