"""The Space's event handlers: selections in, ``{component: update}`` out, for every tab and
"Try it" (the layout and wiring that call them are in `spaces_demo.app`)."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from spaces_demo.content import ContentBuilder
from spaces_demo.folder import ArtifactFolder, NotInFolder
from spaces_demo.tryit import MAX_QUESTION_CHARS, ModelHolder, NotReady
from spaces_demo.uploads import ACCEPTED, UploadRejected, check_spoken_question, discard_upload
from spaces_demo.views import (
    ViewError,
    change_view,
    deactivation_view,
    layer_importance_view,
    layer_lr_view,
    matrix_options,
    matrix_view,
)
from trainers.layer_lr import SCHEMES

logger = logging.getLogger("spaces_demo")

MAX_PROFILES = 6  # artifacts overlaid by default
FRIENDLY_ERRORS = (ViewError, NotInFolder, UploadRejected, NotReady, ValueError, FileNotFoundError)


def warning(text: str) -> str:
    return f"⚠ {text}"


def table(frame: pd.DataFrame):
    """A table update that hides the table while it has nothing to show."""
    return gr.update(value=frame, visible=not frame.empty)


def guarded(message):
    """Turn any exception of a handler into a message in ``message`` (a Markdown component).

    Messages the user can act on (`FRIENDLY_ERRORS`) are shown as they are; anything else is logged
    with its traceback and shown as a short apology, never as a stack trace. A generator handler
    (its updates streamed to the page) stays a generator, its error the last update.
    """

    def failure(handler, error: Exception) -> dict:
        if isinstance(error, FRIENDLY_ERRORS):
            return {message: warning(str(error))}
        logger.exception("handler %s failed", getattr(handler, "__name__", handler))
        return {message: warning(f"Something went wrong ({type(error).__name__}); the details are in the server log.")}

    def decorate(handler):
        if inspect.isgeneratorfunction(handler):  # Gradio streams a handler's updates only when it is a generator function

            @functools.wraps(handler)
            def stream(*args):
                try:
                    yield from handler(*args)
                except Exception as error:
                    yield failure(handler, error)

            return stream

        @functools.wraps(handler)
        def run(*args):
            try:
                return handler(*args)
            except Exception as error:
                return failure(handler, error)

        return run

    return decorate


@dataclass
class Space:
    """The pieces behind the UI: the folder it reads, the content builder, the model for "Try it"."""

    folder: ArtifactFolder
    builder: ContentBuilder
    holder: ModelHolder

    @property
    def default_artifact(self) -> str | None:
        path = self.builder.plan.importance_path
        found = self.folder.importance_artifacts()
        label = next((label for label, found_path in found.items() if found_path == path.resolve()), None)
        return label or next(iter(found), None)


# --- tab renderers: selections in, {component: update} out -----------------------------------


class UI:
    """The components, built in `build_blocks`, so that renderers can address them."""


def render_layers(space: Space, ui: UI, labels: list[str] | None) -> dict:
    found = space.folder.importance_artifacts()
    if not found:
        return {ui.li_note: "No importance artifact in the folder yet.", ui.li_plot: None, ui.li_modules: None}
    chosen = {label: space.folder.resolve(label, found, "importance artifact") for label in (labels or [])}
    view = layer_importance_view(chosen)
    return {
        ui.li_plot: view.layers, ui.li_modules: view.modules, ui.li_stats: table(view.stats),
        ui.li_shift: table(view.shift), ui.li_note: view.note,
    }


def render_matrix(space: Space, ui: UI, label: str | None, module: str | None, layer: int | None,
                  region: str | None = None) -> dict:
    found = space.folder.importance_artifacts()
    if not found:
        return {ui.mx_note: "No importance artifact in the folder yet.", ui.mx_plot: None}
    path = space.folder.resolve(label, found, "importance artifact")
    options = matrix_options(path)
    module = module if module in options.modules else options.module
    layer = int(layer) if layer is not None and 0 <= int(layer) < options.num_layers else options.layer
    figure, clustering, summary = matrix_view(path, label, layer, module, region)
    return {
        ui.mx_module: gr.update(choices=options.modules, value=module),
        ui.mx_layer: gr.update(minimum=0, maximum=options.num_layers - 1, value=layer),
        ui.mx_plot: figure, ui.mx_table: table(clustering), ui.mx_note: summary,
    }


def render_matrix_for_artifact(space: Space, ui: UI, label: str | None, region: str | None = None) -> dict:
    """A new artifact opens on its own default matrix (the peak of its strongest module)."""
    return render_matrix(space, ui, label, None, None, region)


def render_change(space: Space, ui: UI, label_a: str | None, label_b: str | None, layer: int, module: str | None) -> dict:
    found = space.folder.checkpoints()
    dir_a = space.folder.resolve(label_a, found, "checkpoint")
    dir_b = space.folder.resolve(label_b, found, "checkpoint")
    if dir_a == dir_b:
        raise ViewError("Choose two different checkpoints.")
    if not module:
        raise ViewError("Open a matrix above first (artifact, module and layer).")
    heatmap, per_layer, note = change_view(dir_a, dir_b, int(layer), module)
    return {ui.ck_heatmap: heatmap, ui.ck_layers: per_layer, ui.ck_note: note}


def render_deactivation(space: Space, ui: UI) -> dict:
    rows, figure, note = deactivation_view(space.folder.deactivation_results())
    if rows.empty:
        note = (
            f"No deactivation result in {space.folder.root} yet. Make one with `speech-llama deactivate --model MODEL "
            f"--importance X.safetensors --data DATA --out {space.folder.root / 'deactivation' / 'R.json'}` and press Refresh. "
            + note
        )
    return {ui.dt_table: table(rows), ui.dt_plot: figure, ui.dt_note: note}


def render_layer_lr(space: Space, ui: UI, label: str | None, alpha: float, schemes: list[str]) -> dict:
    found = space.folder.importance_artifacts()
    if not found:
        return {ui.lr_note: "No importance artifact in the folder yet.", ui.lr_plot: None}
    figure, coefficients, note = layer_lr_view(space.folder.resolve(label, found, "importance artifact"), alpha, schemes)
    return {ui.lr_plot: figure, ui.lr_table: table(coefficients), ui.lr_note: note}


def refresh_all(space: Space, ui: UI) -> dict:
    """Rescan the folder and redraw every tab with default selections (page load, content ready)."""
    artifacts = list(space.folder.importance_artifacts())
    default = space.default_artifact
    overlay = ([default] if default else []) + [label for label in artifacts if label != default][: MAX_PROFILES - 1]
    checkpoints = list(space.folder.checkpoints())
    updates = {
        ui.status: space.builder.progress.markdown(),
        ui.li_artifacts: gr.update(choices=artifacts, value=overlay),
        ui.mx_artifact: gr.update(choices=artifacts, value=default),
        ui.lr_artifact: gr.update(choices=artifacts, value=default),
        ui.ck_a: gr.update(choices=checkpoints, value=checkpoints[0] if checkpoints else None),
        ui.ck_b: gr.update(choices=checkpoints, value=checkpoints[1] if len(checkpoints) > 1 else None),
        ui.ck_note: "" if len(checkpoints) > 1 else (
            f"|Δθ| needs two model folders of the same architecture in {space.folder.root} "
            f"(e.g. under `checkpoints/`); found {len(checkpoints)}."
        ),
    }
    for render, note, args in (
        (render_layers, ui.li_note, (overlay,)),
        (render_matrix_for_artifact, ui.mx_note, (default,)),
        (render_layer_lr, ui.lr_note, (default, 0.4, list(SCHEMES))),
        (render_deactivation, ui.dt_note, ()),
    ):
        updates.update(guarded(note)(lambda *a, render=render: render(space, ui, *a))(*args))
    return updates


def on_tick(space: Space, ui: UI) -> dict:
    """While building: show progress; once done: stop the timer and redraw everything."""
    progress = space.builder.progress
    if progress.state == "building":
        return {ui.status: progress.markdown()}
    return {**refresh_all(space, ui), ui.timer: gr.Timer(active=False)}


# --- try it ----------------------------------------------------------------------------------


def on_upload(ui: UI, file_path: str | None) -> dict:
    """Check an uploaded file at once: move it into the player (emptying the upload box for the
    next file), or explain why not."""
    if not file_path:
        return {ui.upload_note: ""}
    spoken = check_spoken_question(file_path)
    return {
        ui.audio: file_path,
        ui.upload: None,
        ui.upload_note: f"✓ Loaded “{spoken.name}”: {spoken.seconds:.1f} s of audio. Press **Answer the spoken question**.",
    }


def reject_upload(ui: UI, handler):
    """An upload that fails its check is also removed from the upload box and the player, and
    deleted from the upload folder."""

    def run(file_path):  # one input, the file (no functools.wraps: Gradio reads this signature)
        try:
            return handler(ui, file_path)
        except UploadRejected as rejected:
            discard_upload(file_path)
            return {ui.upload_note: warning(str(rejected)), ui.upload: None, ui.audio: None}

    run.__name__ = handler.__name__
    return run


def answer_typed(space: Space, ui: UI, question: str, max_new_tokens: int) -> Iterator[dict]:
    """The answer to a typed question, shown as it is generated."""
    question = (question or "").strip()
    if not question:
        raise ViewError("Type a question first.")
    if len(question) > MAX_QUESTION_CHARS:
        raise ViewError(f"Please keep the question under {MAX_QUESTION_CHARS} characters.")
    for answer in space.holder.answer_stream(question, None, int(max_new_tokens)):
        yield {ui.answer: answer.markdown()}


def answer_spoken(space: Space, ui: UI, audio_path: str | None, max_new_tokens: int) -> Iterator[dict]:
    """The answer to a recorded or uploaded question, shown as it is generated."""
    if not audio_path:
        raise ViewError(f"Record a question with the microphone or upload one ({ACCEPTED}) first.")
    spoken = check_spoken_question(audio_path)
    for answer in space.holder.answer_stream(None, spoken, int(max_new_tokens)):
        yield {ui.answer: answer.markdown()}
