"""/v1/images: generations from a prompt, edits of uploaded images, and the files behind `url` answers."""

import asyncio
import base64
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

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
DISCONNECT_POLL_S = 0.25  # how often a waiting request looks whether its client is still there


@router.post("/images/generations")
async def create_images(body: ImageRequest, request: Request) -> ImagesResponse:
    state = get_state(request)
    state.require("/v1/images/generations")
    state.check_model(body.model)
    return await _generate(state, request, body, images=[])


@router.post("/images/edits")
async def edit_images(request: Request) -> ImagesResponse:
    state = get_state(request)
    state.require("/v1/images/edits")
    fields, files = await read_form(request, state.settings.max_upload_bytes)
    body = parse_form(ImageRequest, fields)
    state.check_model(body.model)
    if unknown := sorted(files.keys() - {"image"}):
        raise APIError(400, f"unknown file field(s) {unknown}: this route takes image files", param=unknown[0])
    if "image" not in files:
        raise APIError(400, "send the image(s) to edit as `image` files", param="image")
    return await _generate(state, request, body, images=check_images(files["image"], "image"))


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


async def _generate(state: ServerState, request: Request, body: ImageRequest, images: list[bytes]) -> ImagesResponse:
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
    job = WorkerJob(
        f"img_{uuid.uuid4().hex}",
        params,
        images,
        image_format=body.output_format,
        image_compression=body.output_compression,
        lora=body.lora,
    )
    done = await _unless_disconnected(request, state, job.id, state.engine.submit(job))
    if body.response_format == "b64_json":
        data = [ImageData(b64_json=base64.b64encode(image).decode()) for image in done.images]
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
