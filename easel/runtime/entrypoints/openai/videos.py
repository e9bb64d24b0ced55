"""/v1/videos: video generation as asynchronous jobs, their listing, their MP4, and their deletion."""

import uuid
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from easel.runtime.entrypoints.openai.messages import ModelInfo, WorkerJob
from easel.runtime.entrypoints.openai.protocol import (
    APIError,
    VideoDeleted,
    VideoList,
    VideoObject,
    VideoRequest,
    parse_form,
    parse_size,
)
from easel.runtime.entrypoints.openai.state import ServerState, check_api_key, get_state
from easel.runtime.entrypoints.openai.uploads import check_images, read_form
from easel.runtime.entrypoints.openai.video_jobs import VideoJob

router = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])


@router.post("/videos")
async def create_video(request: Request) -> VideoObject:
    """Admits the job and answers at once; GET /v1/videos/{id} follows it."""
    state = get_state(request)
    info = state.require("/v1/videos")
    fields, files = await read_form(request, state.settings.max_upload_bytes)
    body = parse_form(VideoRequest, fields)
    state.check_model(body.model)
    if unknown := sorted(files.keys() - {"input_reference"}):
        raise APIError(
            400, f"unknown file field(s) {unknown}: this route takes an input_reference image", param=unknown[0]
        )
    images = check_images(files.get("input_reference", []), "input_reference")
    spec = video_job(state, info, body, images)
    params = spec.params
    size = f"{params['width'] or info.width}x{params['height'] or info.height}"
    job = VideoJob(
        spec.id,
        state.settings.model_name,
        body.prompt,
        size,
        params["num_frames"],
        params["fps"],
        Path(spec.video_path),
    )
    state.engine.submit(spec, on_progress=job.on_progress, on_frames=job.on_frames).add_done_callback(job.finish)
    state.videos.add(job)
    return job.to_object()


def video_job(state: ServerState, info: ModelInfo, body: VideoRequest, images: list[bytes]) -> WorkerJob:
    """The worker job of a validated video request, its adapters checked, its length from num_frames or seconds,
    its MP4 to be written in the server's store."""
    state.check_loras(body.lora_names())
    width, height = parse_size(body.size)
    fps = body.fps or info.fps
    num_frames = body.num_frames or (round(body.seconds * fps) + 1 if body.seconds else info.num_frames)
    video_id = f"video_{uuid.uuid4().hex}"
    params = {**body.sampling_params(), "width": width, "height": height, "num_frames": num_frames, "fps": fps}
    return WorkerJob(video_id, params, images, video_path=str(state.store.video_path(video_id)), lora=body.lora)


@router.get("/videos")
async def list_videos(
    request: Request,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
) -> VideoList:
    return get_state(request).videos.page(after, limit, order)


@router.get("/videos/{video_id}")
async def retrieve_video(video_id: str, request: Request) -> VideoObject:
    return get_state(request).videos.get(video_id).to_object()


@router.get("/videos/{video_id}/content")
async def video_content(video_id: str, request: Request, variant: str = "video") -> FileResponse:
    job = get_state(request).videos.get(video_id)
    if variant != "video":
        raise APIError(400, f"variant {variant!r} is not available: Easel keeps the video only", param="variant")
    if not job.has_content:
        raise APIError(409, f"video {video_id} is {job.status}: its content is there once it is completed")
    # While a block-causal model makes it, the MP4 holds the frames so far (the header says how many).
    headers = {} if job.frames_ready is None else {"X-Easel-Frames-Ready": str(job.frames_ready)}
    return FileResponse(job.path, media_type="video/mp4", filename=f"{video_id}.mp4", headers=headers)


@router.post("/videos/{video_id}/cancel")
async def cancel_video(video_id: str, request: Request) -> VideoObject:
    """Stops a queued or running job (a running one at its next step); it then reads as failed, code "cancelled"."""
    state = get_state(request)
    job = state.videos.get(video_id)
    if job.status in ("completed", "failed"):
        raise APIError(409, f"video {video_id} is {job.status} already: there is nothing to cancel")
    state.engine.cancel(video_id)
    return job.to_object()


@router.delete("/videos/{video_id}")
async def delete_video(video_id: str, request: Request) -> VideoDeleted:
    """Deletes a job and its MP4; a queued or running one is cancelled first."""
    state = get_state(request)
    job = state.videos.get(video_id)
    if job.status not in ("completed", "failed"):
        state.engine.cancel(video_id)
    job.delete()
    state.videos.remove(video_id)
    return VideoDeleted(id=video_id)
