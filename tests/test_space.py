"""The Gradio Space, driven in a real headless Chromium (Debian `chromium` + Playwright).

A tiny content set is built in-process (tiny-random model, its text importance, a second checkpoint,
a deactivation result); `python -m apps.demo` serves it on a free localhost port, and the
browser checks every tab. Screenshots go to the test's tmp folder; the layer-importance one is also
copied to runs/space-screenshot.png.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from space_fixtures import build_tiny_content, write_wav

from spaces_demo.folder import ArtifactFolder, NotInFolder
from spaces_demo.uploads import UploadRejected, check_spoken_question

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
INSTALL_HINT = "install them with `apt-get install -y chromium` and `.venv/bin/pip install playwright` (no `playwright install` needed)"
REPO = Path(__file__).resolve().parents[1]
SERVER_START_S = 90
STEP_MS = 60_000


# --- fast checks without a browser -------------------------------------------------------------


def test_upload_checks_give_friendly_messages(tmp_path):
    ok = check_spoken_question(write_wav(tmp_path / "q.wav", 1.0))
    assert ok.audio.dtype == np.float32 and abs(ok.seconds - 1.0) < 1e-3

    long_clip = tmp_path / "long.wav"
    with wave.open(str(long_clip), "wb") as handle:  # 31 s of silence at 8 kHz: small file, too long
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(8000)
        handle.writeframes(bytes(2 * 8000 * 31))
    big = tmp_path / "big.wav"
    big.write_bytes(b"RIFF" + bytes(10 * 2**20 + 1))
    fake = tmp_path / "fake.wav"
    fake.write_text("not a wave file")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, expected in ((long_clip, "at most 30 s"), (big, "limited to 10 MB"), (fake, "could not be read as audio"), (text, "not audio")):
        with pytest.raises(UploadRejected, match=expected):
            check_spoken_question(path)


def test_folder_resolves_only_labels_it_listed(tmp_path):
    (tmp_path / "outside.json").write_text('{"fraction": 0.03, "ppl": {"base": 1.0}}')
    folder = ArtifactFolder(tmp_path / "space")
    (folder.root / "deactivation").mkdir(parents=True)
    (folder.root / "deactivation" / "r.json").write_text('{"fraction": 0.03, "ppl": {"base": 2.0, "top": 9.0}}')
    found = folder.deactivation_results()
    assert list(found) == ["deactivation/r.json"]
    assert folder.resolve("deactivation/r.json", found, "result") == folder.root / "deactivation" / "r.json"
    for label in ("../outside.json", str(tmp_path / "outside.json"), ""):
        with pytest.raises(NotInFolder):
            folder.resolve(label, found, "result")


def test_matrix_view_draws_the_frozen_region(tmp_path):
    from importance.artifact import build_summary, save_artifact
    from spaces_demo.views import ViewError, matrix_view

    generator = torch.Generator().manual_seed(0)
    importances = {f"language_model.model.layers.{layer}.mlp.down_proj.weight": torch.rand(16, 8, generator=generator)
                   for layer in range(2)}
    importances["language_model.model.layers.1.mlp.down_proj.weight"][3] += 10.0  # row 3 of layer 1 dominates
    path = save_artifact(tmp_path / "a.safetensors", importances, build_summary(
        importances, num_layers=2, model="t", input="text", num_samples=1, num_tokens=1, reduction="sum"))
    figure, _, note = matrix_view(path, "a", 1, "mlp.down_proj.weight", "3 %")
    # 3 % of 256 entries = 8, all of them in layer 1's row 3 (the global top)
    assert "the 8 entries (6.25% of this matrix; rows touched 1 of 16)" in note and figure is not None
    _, _, plain = matrix_view(path, "a", 0, "mlp.down_proj.weight", "none")
    assert "In red" not in plain
    with pytest.raises(ViewError, match="unknown region '5 %'"):
        matrix_view(path, "a", 0, "mlp.down_proj.weight", "5 %")


def test_try_it_gets_the_model_while_the_importance_is_computed(tmp_path, monkeypatch):
    import threading

    from spaces_demo import content as content_module

    model_dir, importance_started, finish_importance = tmp_path / "model", threading.Event(), threading.Event()

    def slow_importance(plan, model, report):
        importance_started.set()
        assert finish_importance.wait(10)
        return tmp_path / "importance.safetensors"

    monkeypatch.setattr(content_module, "ensure_model", lambda plan, report: model_dir)
    monkeypatch.setattr(content_module, "ensure_importance", slow_importance)
    ready = threading.Event()
    builder = content_module.ContentBuilder(content_module.ContentPlan(folder=tmp_path / "space"), on_ready=ready.set)
    assert builder.model_dir is None
    builder.start()
    assert importance_started.wait(10)
    assert builder.model_dir == model_dir and builder.progress.state == "building" and not ready.is_set()
    finish_importance.set()
    assert builder.wait(10).state == "ready" and ready.is_set()


# --- the running Space in Chromium --------------------------------------------------------------


def _require_browser():
    """Chromium and Playwright are required: a missing one fails the test (never a skip)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"Debian chromium is missing at {CHROMIUM}; {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the Playwright Python package is missing; {INSTALL_HINT}")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Space exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the Space did not serve {url} within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def content(tmp_path_factory):
    return build_tiny_content(tmp_path_factory.mktemp("space"))


def _serve(model_dir: Path, artifacts: Path, log: Path, extra: list[str] = ()):
    """`python -m apps.demo` on a free localhost port: yields its URL, stops it, and fails on a traceback in its log."""
    port = _free_port()
    command = [
        sys.executable, "-m", "apps.demo", "--host", "127.0.0.1", "--port", str(port),
        "--model", str(model_dir), "--artifacts", str(artifacts), *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(process, url, log)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text().split("Keyboard interruption")[0], log.read_text()[-3000:]


@pytest.fixture(scope="module")
def space_url(content, tmp_path_factory):
    yield from _serve(content.model_dir, content.folder, tmp_path_factory.mktemp("space-log") / "server.log")


@pytest.fixture(scope="module")
def released_space_url(tmp_path_factory):
    """The Space serving the released model, assembled from the repository's files (a 2-record importance)."""
    from trainers.release import assemble_lora

    folder = tmp_path_factory.mktemp("released")
    model_dir = assemble_lora(folder / "speech-llama-lora-mini")
    yield from _serve(model_dir, folder / "space", folder / "server.log", ["--importance-samples", "2"])


def _text_appears(page, selector: str, text: str) -> None:
    page.wait_for_function(
        "([selector, text]) => { const node = document.querySelector(selector); return node && node.innerText.includes(text); }",
        arg=[selector, text], timeout=STEP_MS,
    )


def _plot_drawn(page, selector: str) -> None:
    """A matplotlib gr.Plot is drawn as an <img> holding the figure."""
    image = page.locator(f"{selector} img").first
    image.wait_for(state="visible", timeout=STEP_MS)
    assert (image.get_attribute("src") or "").startswith("data:image/")


def _upload(page, path: Path) -> None:
    page.locator("#upload-audio input[type=file]").set_input_files(str(path))


@pytest.mark.slow
def test_space_in_headless_chromium(content, space_url, tmp_path):
    sync_playwright = _require_browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(space_url, wait_until="domcontentloaded")

            # Layer importance (the first tab): the profile plot and the per-artifact table.
            _plot_drawn(page, "#layer-plot")
            _text_appears(page, "#li-artifacts", "importance/tiny-seed0-text")
            page.screenshot(path=str(shots / "1-layer-importance.png"), full_page=True)

            # Matrix explorer: heatmap + rank clustering; then |Δθ| between the two checkpoints.
            page.get_by_role("tab", name="Matrix explorer").click()
            _plot_drawn(page, "#matrix-plot")
            _text_appears(page, "#mx-note", "Rank clustering")
            page.locator("#mx-region").get_by_text("1 %").click()
            _text_appears(page, "#mx-note", "region_freeze")
            _plot_drawn(page, "#matrix-plot")
            page.get_by_text("|Δθ| between two checkpoints").click()
            page.click("#ck-compare")
            _plot_drawn(page, "#change-plot")
            page.screenshot(path=str(shots / "2-matrix-explorer.png"), full_page=True)

            # Deactivation (Table 1) and Layer-LR.
            page.get_by_role("tab", name="Deactivation (Table 1)").click()
            _text_appears(page, "#dt-table", "tiny-text-3pct")
            _plot_drawn(page, "#dt-plot")
            page.get_by_role("tab", name="Layer-LR").click()
            _plot_drawn(page, "#lr-plot")

            # Try it: a wav gets an answer with its speech-token count; bad uploads get a message.
            page.get_by_role("tab", name="Try it").click()
            _upload(page, content.question_wav)
            _text_appears(page, "#upload-note", "Loaded")
            page.click("#ask-audio")
            _text_appears(page, "#answer", "speech tokens")
            assert "S2T" in page.inner_text("#answer")
            page.fill("#question textarea", "What is the capital of France?")
            page.click("#ask-text")
            _text_appears(page, "#answer", "T2T")
            _upload(page, content.oversized)
            _text_appears(page, "#upload-note", "limited to 10 MB")
            _upload(page, content.not_audio)
            _text_appears(page, "#upload-note", "not audio")
            page.screenshot(path=str(shots / "3-try-it.png"), full_page=True)
            assert "Traceback" not in page.inner_text("body")
        finally:
            browser.close()
    (REPO / "runs").mkdir(exist_ok=True)
    shutil.copyfile(shots / "1-layer-importance.png", REPO / "runs" / "space-screenshot.png")


@pytest.mark.slow
@pytest.mark.real_weights
def test_the_released_model_answers_a_voice_no_training_set_holds(released_space_url):
    """Try it, in the browser, with a recording of "What is the capital of France?" by flite's slt voice:
    a voice that reads no training clip (the evaluations' held-out speaker is Festival's slt)."""
    sync_playwright = _require_browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(released_space_url, wait_until="domcontentloaded")
            _plot_drawn(page, "#layer-plot")  # the default content is ready
            page.get_by_role("tab", name="Try it").click()
            _upload(page, REPO / "tests" / "fixtures" / "capital-of-france-flite-slt.wav")
            _text_appears(page, "#upload-note", "Loaded")
            page.click("#ask-audio")
            _text_appears(page, "#answer", "speech tokens")
            page.wait_for_function(
                "() => { const node = document.querySelector('#answer'); return node && node.innerText.toLowerCase().includes('paris'); }",
                timeout=STEP_MS)
            assert "S2T" in page.inner_text("#answer")
        finally:
            browser.close()
