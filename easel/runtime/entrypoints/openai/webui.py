"""The web UI of `easel serve --webui`: a Gradio page at /ui whose jobs go to the worker /v1 uses, checked as /v1
checks them. It is built before the model is loaded: what it shows of the model is set as a browser loads it."""

import asyncio
import html
import io
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from PIL import Image

from easel.errors import EaselError
from easel.runtime.entrypoints.openai.images import image_job
from easel.runtime.entrypoints.openai.messages import Done, ModelInfo, WorkerJob
from easel.runtime.entrypoints.openai.protocol import APIError, ImageRequest, VideoRequest, parse_form
from easel.runtime.entrypoints.openai.state import ServerState
from easel.runtime.entrypoints.openai.uploads import check_images
from easel.runtime.entrypoints.openai.videos import video_job

try:
    import gradio as gr
except ModuleNotFoundError as error:  # an optional dependency: `easel serve` runs without it, unless --webui
    raise EaselError("--webui needs Gradio: pip install 'easel[webui]' (or -e '.[webui]' in a checkout)") from error

PATH = "/ui"
SERVER_CACHE = ""  # the cache choice that leaves it to the server's --cache
CACHE_CHOICES = [("the server's (--cache)", SERVER_CACHE), "none", "quality", "balanced", "fast"]
NO_LORA = "none"  # the LoRA choice of no adapter at all
PROGRESS_POLL_S = 0.1  # how often the progress bar reads the latest step
LOADING = "The model is still loading: reload this page in a moment."


def mount_webui(app: FastAPI, state: ServerState) -> None:
    """Mounts the UI at /ui; with --api-key, its login page takes the key as the password (any user name)."""
    key = state.settings.api_key
    gr.mount_gradio_app(
        app,
        WebUI(state).blocks(),
        path=PATH,
        auth=None if key is None else (lambda _user, password: secrets.compare_digest(password.encode(), key.encode())),
        max_file_size=state.settings.max_upload_bytes,
        allowed_paths=[str(state.store.root)],  # where the worker writes a video job's MP4
        footer_links=["gradio", "settings"],  # not Gradio's API page: /v1 is the API
        ssr_mode=False,
    )


class WebUI:
    """The page, and its two events: a browser loading it, and Generate."""

    def __init__(self, state: ServerState):
        self.state = state

    def blocks(self) -> gr.Blocks:
        """The page's layout; what depends on the model is hidden or empty until `on_load` fills it."""
        name = self.state.settings.model_name
        with gr.Blocks(title=f"Easel: {name}", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
            heading = gr.Markdown(f"## Easel: {name}")
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                    negative_prompt = gr.Textbox(label="Negative prompt")
                    uploads = gr.Gallery(label="Input images", type="filepath", interactive=True, visible=False)
                    with gr.Row():
                        width, height = _number_box("Width"), _number_box("Height")
                        frames = _number_box("Frames", visible=False)
                    with gr.Row():
                        steps, guidance = _number_box("Steps"), _number_box("Guidance scale")
                        true_cfg = _number_box("True CFG scale")  # runs with a negative prompt only
                        seed = _number_box("Seed")
                    with gr.Row():
                        lora = gr.Dropdown(
                            label="LoRA adapters",
                            multiselect=True,
                            visible=False,
                            info=f"empty: the server's choice; {NO_LORA}: no adapter",
                        )
                        cache = gr.Dropdown(
                            CACHE_CHOICES,
                            value=SERVER_CACHE,
                            label="Step cache",
                            allow_custom_value=True,
                            info="a preset, or a spec such as teacache:threshold=0.5",
                        )
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column():
                    gallery = gr.Gallery(label="Images", format="png", interactive=False, elem_id="gallery")
                    video = gr.Video(label="Video", interactive=False, visible=False, elem_id="video")
                    details = gr.Markdown(elem_id="details")
            page.load(self.on_load, outputs=[heading, uploads, width, height, frames, lora, gallery, video])
            generate.click(
                self.generate,
                inputs=[prompt, negative_prompt, uploads, width, height, frames, steps, guidance, true_cfg, seed, lora]
                + [cache],
                outputs=[gallery, video, details],
                concurrency_limit=None,  # the engine's queue bounds the waiting, as it does for /v1
            )
        return page

    def on_load(self) -> tuple[Any, ...]:
        """What the loaded model shows: its task, the image upload, its default size, the adapters, the player."""
        info = self.state.engine.info
        if info is None:
            return (gr.update(value=f"## Easel: {self.state.settings.model_name}\n\n{LOADING}"), *[gr.update()] * 7)
        names = [lora["name"] for lora in self.state.engine.loras]
        images = f"{info.min_images}-{info.max_images}" if info.min_images != info.max_images else str(info.min_images)
        return (
            gr.update(value=f"## Easel: {self.state.settings.model_name}\n\n{info.family}, {info.task}"),
            gr.update(visible=info.max_images > 0, label=f"Input images ({images})"),
            gr.update(value=str(info.width or "")),
            gr.update(value=str(info.height or "")),
            gr.update(value=str(info.num_frames), visible=info.makes_video),
            gr.update(choices=[NO_LORA, *names], visible=bool(names)),
            gr.update(visible=not info.makes_video),
            gr.update(visible=info.makes_video),
        )

    async def generate(
        self,
        prompt: str,
        negative_prompt: str,
        uploads: list[tuple[str, str | None]] | None,
        width: str,
        height: str,
        frames: str,
        steps: str,
        guidance: str,
        true_cfg: str,
        seed: str,
        lora: list[str] | None,
        cache: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio finds the bar by this default
    ) -> tuple[Any, Any, str]:
        """One job through the engine, its step progress on the bar; an APIError is shown as its message."""
        info = self.state.engine.info
        try:
            if info is None:
                raise APIError(503, "the model is still loading: retry shortly")
            # Numbers arrive as text, as in a multipart form, and are checked and converted as /v1 checks them.
            fields = {
                "prompt": prompt,
                "negative_prompt": negative_prompt or None,
                "num_inference_steps": steps.strip() or None,
                "guidance_scale": guidance.strip() or None,
                "true_cfg_scale": true_cfg.strip() or None,
                "seed": seed.strip() or None,
                "cache": cache or None,  # SERVER_CACHE: the server's
                "lora": _lora_choice(lora),
                "size": _size(width.strip(), height.strip()),
                "num_frames": (frames.strip() or None) if info.makes_video else None,
            }
            images = check_images([Path(path).read_bytes() for path, _ in uploads or []], "image")
            job = self._job(info, fields, images)
            progress(0, desc="queued")
            done = await self._run(job, progress)
        except APIError as error:
            raise gr.Error(html.escape(error.message), print_exception=False) from None
        summary = f"{done.width}x{done.height}" + (f", {done.num_frames} frames" if info.makes_video else "")
        summary += f" in {done.timings['total']:.2f} s" if "total" in done.timings else ""
        summary += f"; cache {done.cache['spec']}" if done.cache else ""
        if info.makes_video:
            return None, job.video_path, summary
        return [Image.open(io.BytesIO(data)) for data in done.images], None, summary

    def _job(self, info: ModelInfo, fields: dict[str, Any], images: list[bytes]) -> WorkerJob:
        """The job the matching /v1 route would run for these fields, checked as it checks them."""
        given = {name: value for name, value in fields.items() if value is not None}
        if info.makes_video:
            self.state.require("/v1/videos")
            return video_job(self.state, info, parse_form(VideoRequest, given), images)
        self.state.require("/v1/images/edits" if images or info.min_images > 0 else "/v1/images/generations")
        if len(images) < info.min_images:
            raise APIError(400, f"{info.family} edits images: upload at least {info.min_images}", param="image")
        return image_job(self.state, parse_form(ImageRequest, given), images)

    async def _run(self, job: WorkerJob, progress: gr.Progress) -> Done:
        """Submits `job` and moves the progress bar to each step the worker reports; a closed page cancels it."""
        fractions: list[float] = []  # `on_progress` runs outside Gradio's context: the bar moves here
        outcome = self.state.engine.submit(job, fractions.append)
        try:
            while not outcome.done():
                await asyncio.wait({outcome}, timeout=PROGRESS_POLL_S)
                if fractions:
                    progress(fractions[-1], desc="denoising")
        except asyncio.CancelledError:
            self.state.engine.cancel(job.id)
            outcome.cancel()
            raise
        return outcome.result()


def _lora_choice(names: list[str] | None) -> list[str] | None:
    """The request's `lora`: None (nothing chosen) keeps the server's adapters, NO_LORA means none."""
    if not names:
        return None
    return [] if NO_LORA in names else names


def _size(width: str, height: str) -> str | None:
    """The request's "WxH" (None: the model's default size)."""
    if not width and not height:
        return None
    if not (width.isdigit() and height.isdigit()):
        raise APIError(400, "give the width and the height as whole numbers of pixels, or leave both empty")
    return f"{width}x{height}"


def _number_box(label: str, visible: bool = True) -> gr.Textbox:
    """A number field that may be left empty (Gradio's Number shows and sends 0 for empty)."""
    return gr.Textbox(label=label, placeholder="the model's default", max_lines=1, visible=visible)
