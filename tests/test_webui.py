"""`easel serve --webui`: the Gradio page at /ui, driven in a real headless Chromium on the demo model (a prompt typed,
Generate pressed, the progress bar moving, the image in the gallery, a screenshot kept as tests/artifacts/webui.png,
which git ignores) and its errors as Gradio shows them; in-process, the jobs it makes for video and edit models, its
login under --api-key, and an app without the flag, which answers 404 at /ui and never imports Gradio. One server
serves the browser tests; without Chromium they are skipped, saying how to install it."""

import asyncio
import concurrent.futures
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr
import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from easel.demo import DEMO_MODEL_PATH
from easel.runtime.entrypoints.openai.api_server import create_app
from easel.runtime.entrypoints.openai.messages import Done, ModelInfo, WorkerJob
from easel.runtime.entrypoints.openai.protocol import APIError
from easel.runtime.entrypoints.openai.state import ServerState, ServeSettings
from easel.runtime.entrypoints.openai.webui import NO_LORA, WebUI
from tests.server_fixtures import ServerProcess, error_of

ARTIFACT = Path(__file__).parent / "artifacts" / "webui.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = "a large yellow circle on the right, on a blue background"
STEPS = 100  # the demo model's 64x64: about a second, long enough for the bar to be seen moving
# Each "denoising - 42.0%" the progress bar shows, collected as the page changes.
WATCH_PROGRESS = """() => {
    window.progressSeen = [];
    new MutationObserver(() => {
        const found = document.body.innerText.match(/denoising - [0-9.]+%/g);
        if (found) window.progressSeen.push(...found);
    }).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium to drive the web UI test: install it with `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(browser):
    server = ServerProcess(DEMO_MODEL_PATH, "--webui")
    yield server
    server.stop()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server.url}/ui/")
    # The page's load event fills what depends on the model: the demo model's default size among it.
    page.wait_for_function("() => document.body.innerText.includes('flux, text-to-image')")
    yield page
    page.close()


def test_generate_in_the_browser(page, server):
    assert server.stdout_lines == [f"easel: serving model on {server.url}"]  # Gradio prints nothing of its own
    assert page.get_by_label("Width").input_value() == "64" and page.get_by_label("Height").input_value() == "64"
    page.locator("#prompt textarea").fill(PROMPT)
    page.get_by_label("Steps").fill(str(STEPS))
    page.get_by_label("Seed").fill("7")
    page.evaluate(WATCH_PROGRESS)
    page.locator("#generate").click()
    image = page.locator("#gallery img").first
    image.wait_for(timeout=60_000)
    page.wait_for_function("() => document.querySelector('#gallery img').naturalWidth > 0")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    assert re.fullmatch(r"64x64 in \d+\.\d\d s", page.locator("#details").inner_text().strip())
    # The bar followed the worker's steps: it read more than "queued" and 0% along the way.
    percents = {float(seen.split()[-1].rstrip("%")) for seen in page.evaluate("window.progressSeen")}
    assert any(0 < percent < 100 for percent in percents), percents
    ARTIFACT.parent.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACT, full_page=True)


def test_bad_input_is_a_gradio_error_with_the_message(page, server):
    page.locator("#prompt textarea").fill(PROMPT)
    page.get_by_label("Steps").fill("0")
    page.locator("#generate").click()
    page.get_by_text("num_inference_steps: Input should be greater than or equal to 1").wait_for()
    page.get_by_label("Steps").fill("")
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    page.get_by_text("prompt: String should have at least 1 character").wait_for()
    assert "Traceback" not in page.locator("body").inner_text() and "Traceback" not in server.stderr_text()


class _Engine:
    """The engine as the UI sees it: a loaded model's info and adapters, and jobs that report half way, then end."""

    def __init__(self, info: ModelInfo, error: APIError | None = None):
        self.info, self.error, self.jobs, self.cancelled = info, error, [], []
        self.loras = [{"name": "style", "active": False, "strength": 1.0}]

    def submit(self, spec: WorkerJob, on_progress) -> asyncio.Future:
        if self.error is not None:
            raise self.error
        self.jobs.append(spec)
        outcome = asyncio.get_running_loop().create_future()
        on_progress(0.0)
        asyncio.get_running_loop().call_later(0.15, on_progress, 0.5)
        image = io.BytesIO()
        Image.new("RGB", (32, 16), "red").save(image, format="PNG")
        done = Done(spec.id, [] if spec.video_path else [image.getvalue()], 32, 16, 9, {"total": 0.5})
        asyncio.get_running_loop().call_later(0.3, outcome.set_result, done)
        return outcome

    def cancel(self, job_id: str) -> bool:
        self.cancelled.append(job_id)
        return True


def _generate(ui: WebUI, prompt: str = PROMPT, uploads=None, frames: str = "", lora=None, cache: str = "", **numbers):
    """`WebUI.generate` as Generate calls it, with its fields' text; the bar's readings collected."""
    readings = []
    fields = {name: numbers.get(name, "") for name in ("width", "height", "steps", "guidance", "true_cfg", "seed")}
    # In a thread of its own: Playwright's sync API holds an event loop in this one while the browser is open.
    call = ui.generate(
        prompt,
        "",
        uploads,
        fields["width"],
        fields["height"],
        frames,
        fields["steps"],
        fields["guidance"],
        fields["true_cfg"],
        fields["seed"],
        lora,
        cache,
        progress=lambda fraction, desc: readings.append((fraction, desc)),
    )
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, call).result(), readings


@pytest.fixture
def state():
    state = ServerState(ServeSettings(model_path=str(DEMO_MODEL_PATH), engine_options={}))
    yield state
    state.store.close()


def test_every_kind_of_model_gets_the_job_its_route_would_run(state, tmp_path):
    # A text-to-video model: the MP4 goes where the store keeps videos, at the model's frames and fps unless given.
    state.engine = engine = _Engine(ModelInfo("wan", "text-to-video", True, 0, 1, 832, 480, 81, 16, False))
    (gallery, video, summary), readings = _generate(WebUI(state), frames="9", steps="4", seed="3", cache="fast")
    job = engine.jobs[-1]
    assert gallery is None and video == job.video_path and Path(video).parent == state.store.root
    assert summary == "32x16, 9 frames in 0.50 s"
    assert job.params == {
        "prompt": PROMPT,
        "negative_prompt": None,
        "num_inference_steps": 4,
        "guidance_scale": None,
        "true_cfg_scale": None,
        "seed": 3,
        "cache": "fast",
        "quality_check": False,
        "width": None,
        "height": None,
        "num_frames": 9,
        "fps": 16,
    }
    assert readings[0] == (0, "queued") and (0.5, "denoising") in readings

    # An edit model: the uploaded files go to the worker; none is a 400 the page shows; so is a full queue.
    edits = ModelInfo("qwen_image", "text+image-to-image", False, 1, 3, None, None, 1, 16, False)
    state.engine = engine = _Engine(edits)
    upload = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(upload)
    (gallery, video, _), _ = _generate(WebUI(state), uploads=[(str(upload), None)], lora=["style"], guidance="2.5")
    job = engine.jobs[-1]
    assert job.images == [upload.read_bytes()] and job.lora == ["style"] and job.params["guidance_scale"] == 2.5
    assert [image.size for image in gallery] == [(32, 16)] and video is None
    _generate(WebUI(state), uploads=[(str(upload), None)], lora=[NO_LORA])
    assert engine.jobs[-1].lora == []  # "none": no adapter for this job, whatever the server's choice
    with pytest.raises(gr.Error, match="upload at least 1"):
        _generate(WebUI(state))
    with pytest.raises(gr.Error, match="no LoRA adapter named"):
        _generate(WebUI(state), uploads=[(str(upload), None)], lora=["unknown"])
    state.engine = _Engine(engine.info, APIError(429, "the queue is full: retry later"))
    with pytest.raises(gr.Error, match="the queue is full"):
        _generate(WebUI(state), uploads=[(str(upload), None)])


def test_with_an_api_key_the_ui_asks_for_it():
    state = ServerState(ServeSettings(model_path=str(DEMO_MODEL_PATH), engine_options={}, api_key="sk-ui", webui=True))
    try:
        client = TestClient(create_app(state))  # the worker is not started: Gradio's routes answer without it
        assert client.get("/ui/config").status_code == 401
        assert client.post("/ui/gradio_api/queue/join", json={}).status_code == 401
        assert client.post("/ui/login", data={"username": "anyone", "password": "wrong"}).status_code == 400
        assert client.post("/ui/login", data={"username": "anyone", "password": "sk-ui"}).status_code == 200
        assert client.get("/ui/config").status_code == 200
        assert client.get("/v1/models").status_code == 401  # the login is the UI's: /v1 still wants the bearer key
    finally:
        state.store.close()


def test_without_webui_ui_is_404_and_gradio_is_not_imported():
    # In a fresh interpreter: this one has imported Gradio already.
    script = f"""
import json, sys
from fastapi.testclient import TestClient
from PIL import Image
from easel.runtime.entrypoints.openai.api_server import create_app
from easel.runtime.entrypoints.openai.messages import Done, ModelInfo, WorkerJob
from easel.runtime.entrypoints.openai.protocol import APIError
from easel.runtime.entrypoints.openai.state import ServerState, ServeSettings
state = ServerState(ServeSettings(model_path={str(DEMO_MODEL_PATH)!r}, engine_options={{}}))
response = TestClient(create_app(state)).get("/ui")
state.store.close()
print(json.dumps({{"status": response.status_code, "body": response.json(), "gradio": "gradio" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["status"], answer["gradio"]) == (404, False), answer
    assert error_of(httpx.Response(404, json=answer["body"]))["message"] == "no route GET /ui"
