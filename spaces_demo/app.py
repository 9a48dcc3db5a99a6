"""speech-llama Space: where a speech LLM's textual knowledge lives, and the model itself.

Tabs: Layer importance · Matrix explorer · Deactivation (Table 1) · Layer-LR · Try it · Paper: cost
and cure (a reproduction's trade-off frontier, also the one shipped in docs/paper/). Everything else
shown comes from one artifact folder (default ``runs/space``); on first start the default content
(offline-mini and its text-input importance) is built there in the background, with progress above
the tabs and in the log.

Run locally with ``speech-llama demo`` (or ``make demo``); on a Hugging Face Space this file is the
``app_file`` and is run as ``python app.py`` (folder and model from ``SPEECH_LLAMA_SPACE_ARTIFACTS``
and ``SPEECH_LLAMA_SPACE_MODEL`` when set).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import gradio as gr

if __package__ in (None, ""):  # run as a script (a Space runs `python app.py`): import the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spaces_demo.content import ContentBuilder, ContentPlan  # noqa: E402
from spaces_demo.folder import DEFAULT_ARTIFACTS, ArtifactFolder  # noqa: E402
from spaces_demo.frontier import frontier_tab  # noqa: E402
from spaces_demo.handlers import (  # noqa: E402
    UI,
    Space,
    answer_spoken,
    answer_typed,
    guarded,
    on_tick,
    on_upload,
    refresh_all,
    reject_upload,
    render_change,
    render_deactivation,
    render_layer_lr,
    render_layers,
    render_matrix,
    render_matrix_for_artifact,
)
from spaces_demo.tryit import ModelHolder  # noqa: E402
from spaces_demo.uploads import ACCEPTED, UPLOAD_CACHE  # noqa: E402
from spaces_demo.views import REGION_FRACTIONS  # noqa: E402
from trainers.layer_lr import SCHEMES  # noqa: E402

logger = logging.getLogger("spaces_demo")

MAX_UPLOAD = "200mb"  # hard limit of the upload route; the friendly 10 MB check comes first below it

INTRO = """# speech-llama: where does a speech LLM keep its textual knowledge?
Taylor importance |θ·∂L/∂θ| of every decoder weight (the seed paper's Eq. 2), its distribution over
layers and inside weight matrices, the Table 1 check (zero the top / bottom / random share and watch
perplexity), the Layer-LR schedule derived from it, and the model itself."""


# --- layout ----------------------------------------------------------------------------------


def _layer_tab(ui: UI) -> None:
    gr.Markdown("Share of the total importance in each decoder layer, I_l / Σ I, for each chosen artifact. "
                "The first one chosen is the reference for the shift metrics.")
    ui.li_artifacts = gr.Dropdown(label="Importance artifacts", multiselect=True, elem_id="li-artifacts")
    ui.li_note = gr.Markdown(elem_id="li-note")
    ui.li_plot = gr.Plot(label="Layer profiles", elem_id="layer-plot")
    ui.li_shift = gr.Dataframe(label="Shift vs the first artifact", interactive=False, visible=False, elem_id="shift-table")
    ui.li_stats = gr.Dataframe(label="Profiles", interactive=False, visible=False)
    ui.li_modules = gr.Plot(label="Module profiles", elem_id="module-plot")


def _matrix_tab(ui: UI) -> None:
    gr.Markdown("Importance of one weight matrix (max-pooled to ≤ 256², log colour scale) with the row and column "
                "sums; rank clustering = how much of the mass sits in the top 5 % rows / columns.")
    with gr.Row():
        ui.mx_artifact = gr.Dropdown(label="Artifact", elem_id="mx-artifact")
        ui.mx_module = gr.Dropdown(label="Module", elem_id="mx-module")
        ui.mx_layer = gr.Slider(0, 1, step=1, value=0, label="Layer", elem_id="mx-layer")
        ui.mx_region = gr.Radio(list(REGION_FRACTIONS), value="none", elem_id="mx-region",
                                label="Frozen region (method region_freeze: the global top p, in red)")
    ui.mx_note = gr.Markdown(elem_id="mx-note")
    ui.mx_plot = gr.Plot(label="Importance heatmap", elem_id="matrix-plot")
    ui.mx_table = gr.Dataframe(label="Rank clustering", interactive=False, visible=False)
    with gr.Accordion("|Δθ| between two checkpoints (same module and layer)", open=False):
        with gr.Row():
            ui.ck_a = gr.Dropdown(label="Checkpoint A (before)", elem_id="ck-a")
            ui.ck_b = gr.Dropdown(label="Checkpoint B (after)", elem_id="ck-b")
            ui.ck_button = gr.Button("Compare", elem_id="ck-compare")
        ui.ck_note = gr.Markdown(elem_id="ck-note")
        with gr.Row():
            ui.ck_heatmap = gr.Plot(label="|Δθ| heatmap", elem_id="change-plot")
            ui.ck_layers = gr.Plot(label="Mean |Δθ| per layer")


def _deactivation_tab(ui: UI) -> None:
    gr.Markdown("Perplexity on held-out records with the top / bottom / a random share of the analysed parameters "
                "zeroed (the seed paper's Table 1), one row per result in the folder.")
    ui.dt_refresh = gr.Button("Refresh", size="sm")
    ui.dt_note = gr.Markdown(elem_id="dt-note")
    ui.dt_table = gr.Dataframe(label="Table 1", interactive=False, visible=False, elem_id="dt-table")
    ui.dt_plot = gr.Plot(label="Perplexity", elem_id="dt-plot")


def _layer_lr_tab(ui: UI) -> None:
    gr.Markdown("Learning-rate multiplier per decoder layer that `--layer_lr_scheme` would use with this importance "
                "profile: minmax `c = 1 − α·(I − min)/(max − min)`, power `c = (I / min)^−α`, softmax `c = L·softmax(−α·z(I))`.")
    with gr.Row():
        ui.lr_artifact = gr.Dropdown(label="Importance artifact", elem_id="lr-artifact")
        ui.lr_alpha = gr.Slider(0.0, 2.0, value=0.4, step=0.05, label="α", elem_id="lr-alpha")
        ui.lr_schemes = gr.CheckboxGroup(list(SCHEMES), value=list(SCHEMES), label="Schemes")
    ui.lr_note = gr.Markdown(elem_id="lr-note")
    ui.lr_plot = gr.Plot(label="Coefficients", elem_id="lr-plot")
    ui.lr_table = gr.Dataframe(label="c_l per layer", interactive=False, visible=False)


def _try_tab(ui: UI) -> None:
    gr.Markdown("Ask the served model. A typed question uses the text prompt (T2T); a spoken one goes through the "
                "Whisper encoder and the adaptor into `<speech>` tokens (S2T).")
    with gr.Row():
        with gr.Column():
            ui.question = gr.Textbox(label="Typed question", placeholder="What is the capital of France?", elem_id="question")
            ui.ask_text = gr.Button("Answer the typed question", variant="primary", elem_id="ask-text")
        with gr.Column():
            ui.audio = gr.Audio(sources=["microphone"], type="filepath", label="Spoken question (record, or upload below)", elem_id="audio")
            ui.upload = gr.File(label=f"Upload a spoken question ({ACCEPTED})", elem_id="upload-audio")
            ui.upload_note = gr.Markdown(elem_id="upload-note")
            ui.ask_audio = gr.Button("Answer the spoken question", variant="primary", elem_id="ask-audio")
    ui.max_new_tokens = gr.Slider(8, 128, value=48, step=8, label="max new tokens")
    ui.answer = gr.Markdown(elem_id="answer")


def _all_outputs(ui: UI) -> list:
    return [value for value in vars(ui).values() if isinstance(value, (gr.components.Component, gr.Timer))]


def _wire(space: Space, ui: UI, demo: gr.Blocks) -> None:
    """Each event updates only its own tab's outputs (so only they show a spinner)."""
    bind = functools.partial
    layers_out = [ui.li_plot, ui.li_modules, ui.li_stats, ui.li_shift, ui.li_note]
    matrix_in = [ui.mx_artifact, ui.mx_module, ui.mx_layer, ui.mx_region]
    matrix_out = [ui.mx_module, ui.mx_layer, ui.mx_plot, ui.mx_table, ui.mx_note]
    lr_in, lr_out = [ui.lr_artifact, ui.lr_alpha, ui.lr_schemes], [ui.lr_plot, ui.lr_table, ui.lr_note]
    answer_in = [ui.question, ui.max_new_tokens]

    demo.load(bind(refresh_all, space, ui), outputs=_all_outputs(ui))
    ui.timer.tick(bind(on_tick, space, ui), outputs=_all_outputs(ui), show_progress="hidden")
    ui.li_artifacts.input(guarded(ui.li_note)(bind(render_layers, space, ui)), ui.li_artifacts, layers_out)
    ui.mx_artifact.input(guarded(ui.mx_note)(bind(render_matrix_for_artifact, space, ui)), [ui.mx_artifact, ui.mx_region],
                         matrix_out)
    matrix = guarded(ui.mx_note)(bind(render_matrix, space, ui))
    ui.mx_module.input(matrix, matrix_in, matrix_out)
    ui.mx_layer.release(matrix, matrix_in, matrix_out)
    ui.mx_region.input(matrix, matrix_in, matrix_out)
    ui.ck_button.click(
        guarded(ui.ck_note)(bind(render_change, space, ui)), [ui.ck_a, ui.ck_b, ui.mx_layer, ui.mx_module],
        [ui.ck_heatmap, ui.ck_layers, ui.ck_note],
    )
    ui.dt_refresh.click(guarded(ui.dt_note)(bind(render_deactivation, space, ui)), None, [ui.dt_table, ui.dt_plot, ui.dt_note])
    layer_lr = guarded(ui.lr_note)(bind(render_layer_lr, space, ui))
    ui.lr_artifact.input(layer_lr, lr_in, lr_out)
    ui.lr_alpha.change(layer_lr, lr_in, lr_out)
    ui.lr_schemes.input(layer_lr, lr_in, lr_out)
    ui.upload.upload(guarded(ui.upload_note)(reject_upload(ui, on_upload)), ui.upload, [ui.audio, ui.upload, ui.upload_note])
    typed = guarded(ui.answer)(bind(answer_typed, space, ui))
    ui.ask_text.click(typed, answer_in, ui.answer)
    ui.question.submit(typed, answer_in, ui.answer)
    ui.ask_audio.click(guarded(ui.answer)(bind(answer_spoken, space, ui)), [ui.audio, ui.max_new_tokens], ui.answer)


def build_blocks(space: Space) -> gr.Blocks:
    """The Gradio app; every tab is filled on page load from the folder."""
    ui = UI()
    with gr.Blocks(title="speech-llama: parameter importance explorer", analytics_enabled=False,
                   delete_cache=UPLOAD_CACHE) as demo:
        gr.Markdown(INTRO)
        model = space.builder.plan.model_path
        gr.Markdown(f"Serving **{model.name}** · artifact folder `{space.folder.root}`", elem_id="served")
        ui.status = gr.Markdown(space.builder.progress.markdown(), elem_id="status")
        ui.timer = gr.Timer(1.5, active=space.builder.progress.state == "building")
        with gr.Tabs():
            with gr.Tab("Layer importance", id="layers"):
                _layer_tab(ui)
            with gr.Tab("Matrix explorer", id="matrix"):
                _matrix_tab(ui)
            with gr.Tab("Deactivation (Table 1)", id="deactivation"):
                _deactivation_tab(ui)
            with gr.Tab("Layer-LR", id="layer-lr"):
                _layer_lr_tab(ui)
            with gr.Tab("Try it", id="try"):
                _try_tab(ui)
            with gr.Tab("Paper: cost and cure", id="paper"):
                frontier_tab(space.folder.root, demo)
        _wire(space, ui, demo)
    return demo


def create_space(plan: ContentPlan) -> tuple[gr.Blocks, Space]:
    """Blocks + the background pieces; starts building the default content when it is missing."""
    holder = ModelHolder(lambda: builder.model_dir)
    builder = ContentBuilder(plan, on_ready=holder.preload)
    space = Space(folder=ArtifactFolder(plan.folder), builder=builder, holder=holder)
    demo = build_blocks(space)
    if builder.progress.state == "ready":
        holder.preload()
    else:
        logger.info("first start: building the default content in %s (progress in the UI and here)", plan.folder)
        builder.start()
    return demo, space


def launch(plan: ContentPlan, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> tuple[gr.Blocks, str]:
    """Start serving; returns (blocks, local URL). With ``block`` it serves until interrupted."""
    Path(plan.folder).mkdir(parents=True, exist_ok=True)
    demo, _ = create_space(plan)
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=False,
        max_file_size=MAX_UPLOAD, footer_links=["gradio"],
    )
    print(f"speech-llama Space serving at {url}  (artifact folder: {Path(plan.folder).resolve()})", flush=True)
    if block:
        demo.block_thread()
    return demo, url


def configure_logging() -> None:
    """INFO lines of the Space (progress of the default content) on stderr; HTTP clients quiet."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    """A Hugging Face Space runs this file: serve on the host/port Spaces set in the environment."""
    configure_logging()
    model = os.environ.get("SPEECH_LLAMA_SPACE_MODEL")
    plan = ContentPlan(
        folder=Path(os.environ.get("SPEECH_LLAMA_SPACE_ARTIFACTS", DEFAULT_ARTIFACTS)),
        model_dir=Path(model) if model else None,
    )
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    launch(plan, host=host, port=port)


if __name__ == "__main__":
    main()
