"""/v1/images: generations from a prompt, edits of uploaded images, and the files behind `url` answers."""

import asyncio
import base64
import io
import json
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, StreamingResponse
from PIL import Image

from easel.runtime.entrypoints.openai.messages import CANCELLED_STATUS, Done, WorkerJob
from easel.runtime.entrypoints.openai.protocol import (
    APIError,
    EaselReport,
    ImageData,
    ImageRequest,
    ImagesResponse,
    parse_form,
    parse_size,
)
from easel.runtime.entrypoints.openai.state import ServerState, check_api_key, get_state
from easel.runtime.entrypoints.openai.storage import MEDIA_TYPES
from easel.runtime.entrypoints.openai.uploads import check_images, read_form

router = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])
# OpenAI's completed events count tokens of its own models; nothing here is priced so.
NO_USAGE = {
    "input_tokens": 0,
    "output_tokens": 0,
    "total_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
}
DISCONNECT_POLL_S = 0.25  # how often a waiting request looks whether its client is still there


@router.post("/images/generations", response_model=None)
async def create_images(body: ImageRequest, request: Request) -> ImagesResponse | StreamingResponse:
    state = get_state(request)
    state.require("/v1/images/generations")
    state.check_model(body.model)
    return await _generate(state, request, body, images=[], events="image_generation")


@router.post("/images/edits", response_model=None)
async def edit_images(request: Request) -> ImagesResponse | StreamingResponse:
    state = get_state(request)
    state.require("/v1/images/edits")
    fields, files = await read_form(request, state.settings.max_upload_bytes)
    body = parse_form(ImageRequest, fields)
    state.check_model(body.model)
    if unknown := sorted(files.keys() - {"image"}):
        raise APIError(400, f"unknown file field(s) {unknown}: this route takes image files", param=unknown[0])
    if "image" not in files:
        raise APIError(400, "send the image(s) to edit as `image` files", param="image")
    images = check_images(files["image"], "image")
    return await _generate(state, request, body, images=images, events="image_edit")


@router.get("/images/{image_id}/content", name="image_content")
async def image_content(image_id: str, request: Request) -> FileResponse:
    path = get_state(request).store.image(image_id)
    if path is None:
        raise APIError(404, f"no image {image_id!r} (images are kept for a while only)", code="not_found")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.removeprefix(".")])


async def _unless_disconnected(request: Request, state: ServerState, job_id: str, outcome: asyncio.Future) -> Done:
    """The job's result; a client that hangs up first cancels it, which frees the worker at the next step."""
    while True:
        done, _ = await asyncio.wait({outcome}, timeout=DISCONNECT_POLL_S)
        if done:
            return outcome.result()
        if await request.is_disconnected():
            state.engine.cancel(job_id)
            raise APIError(CANCELLED_STATUS, "the client disconnected", code="cancelled")


def image_job(state: ServerState, body: ImageRequest, images: list[bytes]) -> WorkerJob:
    """The worker job of a validated image request, its adapters and background checked against the model."""
    state.check_loras(body.lora_names())
    if body.background == "transparent" and not state.engine.info.transparent:
        raise APIError(
            400,
            f"{state.engine.info.family} makes opaque images: background='transparent' needs a model that makes "
            "transparent ones (Qwen-Image-Layered)",
            param="background",
        )
    width, height = parse_size(body.size)
    params = {**body.sampling_params(), "width": width, "height": height, "num_outputs_per_prompt": body.n}
    return WorkerJob(
        f"img_{uuid.uuid4().hex}",
        params,
        images,
        image_format=body.output_format,
        image_compression=body.output_compression,
        lora=body.lora,
        partial_images=body.partial_images,
    )


async def _generate(
    state: ServerState, request: Request, body: ImageRequest, images: list[bytes], events: str
) -> ImagesResponse | StreamingResponse:
    job = image_job(state, body, images)
    if body.stream:
        if body.partial_images and state.settings.engine_options.get("num_gpus", 1) > 1:
            raise APIError(
                400, "partial images are not made under --num-gpus yet: ask for none", param="partial_images"
            )
        return _stream(state, body, job, events)
    done = await _unless_disconnected(request, state, job.id, state.engine.submit(job))
    if body.response_format == "b64_json":
        data = [ImageData(b64_json=_b64(image)) for image in done.images]
    else:
        ids = [state.store.put_image(image, body.output_format) for image in done.images]
        data = [ImageData(url=str(request.url_for("image_content", image_id=image_id))) for image_id in ids]
    return ImagesResponse(
        created=int(time.time()),
        data=data,
        output_format=body.output_format,
        size=f"{done.width}x{done.height}",
        easel=EaselReport(cache=done.cache, quality=done.quality),
    )


def _stream(state: ServerState, body: ImageRequest, job: WorkerJob, events: str) -> StreamingResponse:
    """OpenAI's image streaming: `{events}.partial_image` events while the job runs, then one `{events}.completed`
    per image (or an `error` event). A client that hangs up cancels the job, as Starlette then stops the stream."""
    partials: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    outcome = state.engine.submit(job, on_preview=lambda index, image: partials.put_nowait((index, image)))
    common = {"background": body.background or "auto", "output_format": body.output_format}
    common["quality"] = body.quality if body.quality in ("low", "medium", "high") else "auto"

    def event(kind: str, **fields) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'created_at': int(time.time()), **fields})}\n\n"

    async def stream():
        try:
            while not (outcome.done() and partials.empty()):
                waiter = asyncio.ensure_future(partials.get())
                await asyncio.wait({waiter, outcome}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    continue
                index, image = waiter.result()
                size = "x".join(map(str, Image.open(io.BytesIO(image)).size))
                yield event(
                    f"{events}.partial_image", b64_json=_b64(image), size=size, partial_image_index=index, **common
                )
            try:
                done = outcome.result()
            except APIError as error:
                yield event("error", error=error.body()["error"])
                return
            for image in done.images:
                size = f"{done.width}x{done.height}"
                yield event(f"{events}.completed", b64_json=_b64(image), size=size, usage=NO_USAGE, **common)
        finally:
            if not outcome.done():
                state.engine.cancel(job.id)

    return StreamingResponse(stream(), media_type="text/event-stream")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
