"""`easel serve` with a tiny editing model (edits, uploads, the queue bound) and a tiny video model (jobs through to
their MP4), driven through the official `openai` client and httpx. One server per model for the module."""

import base64
import concurrent.futures
import io
import time

import httpx
import imageio.v3 as iio
import openai
import pytest
from PIL import Image

from tests.server_fixtures import ServerProcess, error_of

FAULT_PROMPT = "please fail inside the pipeline"
# The client's video calls are marked deprecated (OpenAI's own video service is to close); the API shape stays.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


def _png(color: str, size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def edit_server(tiny_pipeline):
    server = ServerProcess(
        tiny_pipeline("qwen-image-edit-plus"),
        "--served-model-name",
        "edit-model",
        "--max-batch-size",  # one runs at a time, so that the queue bound is reached
        "1",
        "--max-queued-requests",
        "1",
        "--max-upload-mb",
        "0.5",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def video_server(tiny_pipeline):
    # One job at a time, so that a second one is queued; tests/test_batching.py runs video jobs together.
    server = ServerProcess(
        tiny_pipeline("wan-t2v"), "--max-batch-size", "1", env={"EASEL_SERVE_FAULT_PROMPT": FAULT_PROMPT}
    )
    yield server
    server.stop()


# --- edits ----------------------------------------------------------------------------------------------------
def test_edit_with_two_images(edit_server):
    client = edit_server.client()
    assert [model.id for model in client.models.list()] == ["edit-model"]
    response = client.images.edit(
        image=[("red.png", _png("red"), "image/png"), ("blue.png", _png("blue"), "image/png")],
        prompt="put them side by side",
        model="edit-model",
        size="64x64",
        extra_body={"num_inference_steps": 2, "seed": 3},
    )
    image = Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json)))
    assert (image.format, image.size, response.size) == ("PNG", (64, 64), "64x64")


def test_generation_on_edit_model_is_400(edit_server):
    with pytest.raises(openai.BadRequestError) as raised:
        edit_server.client().images.generate(prompt="a cat", size="64x64")
    message = raised.value.body["message"]
    assert "text+image-to-image" in message and "/v1/images/edits" in message


@pytest.mark.parametrize(
    "files, data, status, words",
    [
        ({"image": ("notes.png", b"not an image at all")}, {"prompt": "x"}, 400, "not an image"),
        ({"image": ("big.png", b"\0" * 600_000)}, {"prompt": "x"}, 413, "larger than this server takes"),
        ({"image[]": [("a.png", _png("red"))] * 4}, {"prompt": "x", "size": "64x64"}, 400, "1 to 3 input image"),
        ({"image": ("a.png", _png("red")), "mask": ("m.png", _png("red"))}, {"prompt": "x"}, 400, "mask"),
        ({"image": ("a.png", _png("red"))}, {"prompt": "x", "steps": "4"}, 400, "unknown parameter 'steps'"),
        ({"image": ("a.png", _png("red"))}, {"prompt": "x", "n": "11"}, 400, "n"),
        ({"image": ("a.png", _png("red"))}, {"prompt": "x", "model": "other"}, 404, "edit-model"),
        ({}, {"prompt": "x"}, 400, "image"),
        (None, None, 400, "multipart/form-data"),
    ],
)
def test_bad_edits(edit_server, files, data, status, words):
    if files is None:
        response = httpx.post(f"{edit_server.url}/v1/images/edits", json={"prompt": "x"})
    else:
        parts = [
            (name, part) for name, value in files.items() for part in (value if isinstance(value, list) else [value])
        ]
        fields = [(name, (None, value)) for name, value in data.items()]
        response = httpx.post(f"{edit_server.url}/v1/images/edits", files=fields + parts, timeout=60)
    assert response.status_code == status, response.text
    assert words in error_of(response)["message"]


def test_queue_bound_is_429(edit_server):
    # One edit runs and one waits (--max-queued-requests 1): of four sent at once, the last ones are turned away.
    def edit(seed: int) -> httpx.Response:
        return httpx.post(
            f"{edit_server.url}/v1/images/edits",
            files=[
                ("image", ("a.png", _png("red"))),
                ("prompt", (None, "x")),
                ("size", (None, "64x64")),
                ("num_inference_steps", (None, "2")),
                ("seed", (None, str(seed))),
            ],  # fmt: skip
            timeout=120,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(edit, range(4)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses
    error = error_of(next(response for response in responses if response.status_code == 429))
    assert error["code"] == "queue_full" and "--max-queued-requests 1" in error["message"]
    assert edit_server.health().json()["queued"] == 0


# --- videos ---------------------------------------------------------------------------------------------------
def _wait_video(client: openai.OpenAI, video_id: str, progress: list[int] | None = None):
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        if progress is not None:
            progress.append((video.status, video.progress))
        if video.status in ("completed", "failed"):
            return video
        time.sleep(0.02)
    raise AssertionError(f"video {video_id} never finished: {video}")


def test_video_job_to_mp4(video_server):
    client = video_server.client()
    video = client.videos.create(prompt="a cat surfing", size="32x32", extra_body={"num_frames": 9, **_steps(2)})
    assert (video.object, video.model, video.size, video.seconds) == ("video", "wan-t2v", "32x32", "0.5625")
    assert video.status in ("queued", "in_progress")
    video = _wait_video(client, video.id)
    assert (video.status, video.progress, video.error) == ("completed", 100, None)
    mp4 = client.videos.download_content(video.id).content
    assert mp4[4:8] == b"ftyp"
    assert video.id in [listed.id for listed in client.videos.list()]
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_video_progress_and_list(video_server):
    client = video_server.client()
    first = client.videos.create(prompt="waves", size="32x32", extra_body={"num_frames": 5, **_steps(2)})
    # Enough steps that the job is seen in progress.
    video = client.videos.create(prompt="rain", size="32x32", extra_body={"num_frames": 5, **_steps(300)})
    progress = []
    assert _wait_video(client, video.id, progress).status == "completed"
    percentages = [percent for status, percent in progress if status == "in_progress"]
    assert percentages and percentages == sorted(percentages) and all(0 <= p < 100 for p in percentages)
    assert max(percentages) > 0
    latest = client.videos.list(order="desc", limit=1)  # one page: iterating would fetch the next ones
    assert [listed.id for listed in latest.data] == [video.id] and latest.has_more
    page = client.videos.list(order="asc", after=first.id)
    assert [listed.id for listed in page.data] == [video.id]


def _running(client: openai.OpenAI, prompt: str) -> str:
    """A video job far longer than any test waits (1000 steps), once it runs."""
    video = client.videos.create(prompt=prompt, size="32x32", extra_body={"num_frames": 5, **_steps(1000)})
    while client.videos.retrieve(video.id).status == "queued":
        time.sleep(0.02)
    return video.id


def _short_job_completes(client: openai.OpenAI) -> None:
    """The worker is free again: a 2-step job runs to the end."""
    video = client.videos.create(prompt="after", size="32x32", extra_body={"num_frames": 5, **_steps(2)})
    assert _wait_video(client, video.id).status == "completed"


def test_cancel_stops_a_running_video_job(video_server):
    client = video_server.client()
    video_id = _running(client, "a long one")
    cancelled = httpx.post(f"{video_server.url}/v1/videos/{video_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["id"] == video_id
    video = _wait_video(client, video_id)
    assert (video.status, video.error.code) == ("failed", "cancelled") and "cancelled at step" in video.error.message
    assert video.progress < 99
    again = httpx.post(f"{video_server.url}/v1/videos/{video_id}/cancel")
    assert again.status_code == 409 and "failed already" in error_of(again)["message"]
    _short_job_completes(client)


def test_delete_cancels_queued_and_running_video_jobs(video_server):
    client = video_server.client()
    running = _running(client, "a long one")
    queued = client.videos.create(prompt="next", size="32x32", extra_body={"num_frames": 5, **_steps(2)})
    assert client.videos.retrieve(queued.id).status == "queued"
    assert video_server.health().json()["queued"] == 1
    for video_id in (queued.id, running):
        assert client.videos.delete(video_id).deleted
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video_id)
    deadline = time.monotonic() + 60
    while (health := video_server.health().json())["running"] or health["queued"]:
        assert time.monotonic() < deadline, f"the deleted jobs still hold the worker: {health}"
        time.sleep(0.05)
    _short_job_completes(client)


def test_failed_video_job(video_server):
    client = video_server.client()
    video = _wait_video(client, client.videos.create(prompt=FAULT_PROMPT, size="32x32", extra_body=_steps(2)).id)
    assert video.status == "failed" and "injected fault" in video.error.message
    content = httpx.get(f"{video_server.url}/v1/videos/{video.id}/content")
    assert content.status_code == 409 and "failed" in error_of(content)["message"]
    assert client.videos.delete(video.id).deleted


def test_bad_video_requests(video_server):
    client = video_server.client()
    with pytest.raises(openai.BadRequestError) as raised:
        client.videos.create(prompt="x", seconds="4", extra_body={"num_frames": 9})
    assert "seconds or num_frames" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.videos.create(prompt="x", size="32 by 32")
    assert raised.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a cat")
    assert "text-to-video" in raised.value.body["message"] and "/v1/videos" in raised.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content("video_unknown")
    unknown = httpx.post(f"{video_server.url}/v1/videos", files={"prompt": (None, "x"), "style": (None, "noir")})
    assert unknown.status_code == 400 and "style" in error_of(unknown)["message"]


def _steps(steps: int) -> dict:
    return {"num_inference_steps": steps}


@pytest.fixture(scope="module")
def causal_server(tiny_pipeline):
    server = ServerProcess(tiny_pipeline("wan-causal"))
    yield server
    server.stop()


def test_block_causal_video_job_serves_the_frames_made_so_far(causal_server):
    """Self-forcing Wan makes its video a block of frames at a time: while it runs, the job says how many frames
    exist and its content route serves them as a playable MP4."""
    client, url = causal_server.client(), causal_server.url
    # 40 blocks of 3 latent frames (the first gives 9 frames, each later one 12): long enough to be seen part-way.
    total = 9 + 12 * 39
    video = client.videos.create(prompt="a long pan", size="32x32", extra_body={"num_frames": total})
    partial = None
    while partial is None:
        job = httpx.get(f"{url}/v1/videos/{video.id}").json()
        if job["status"] in ("completed", "failed"):
            break
        if job["status"] == "in_progress" and job["frames_ready"]:
            response = httpx.get(f"{url}/v1/videos/{video.id}/content")
            if int(response.headers["x-easel-frames-ready"]) < total:
                partial = (int(response.headers["x-easel-frames-ready"]), response.content)
        time.sleep(0.02)
    assert partial is not None, "the job was never seen with part of its frames"
    frames, mp4 = partial
    assert frames % 12 == 9 and iio.imread(mp4, extension=".mp4").shape == (frames, 32, 32, 3)
    done = _wait_video(client, video.id)
    assert done.status == "completed" and done.model_extra["frames_ready"] == total
    final = client.videos.download_content(video.id).content
    assert iio.imread(final, extension=".mp4").shape == (total, 32, 32, 3)


@pytest.fixture(scope="module")
def flux2_server(tiny_pipeline):
    server = ServerProcess(tiny_pipeline("flux2-klein"))
    yield server
    server.stop()


def test_flux2_generates_and_edits_with_several_reference_images(flux2_server):
    """FLUX.2 answers both routes: text-to-image, and multi-reference editing whose size follows the first image."""
    client = flux2_server.client()
    steps = {"num_inference_steps": 2, "seed": 3}
    generated = client.images.generate(prompt="a red circle", size="80x48", extra_body=steps)
    assert Image.open(io.BytesIO(base64.b64decode(generated.data[0].b64_json))).size == (80, 48)
    edited = client.images.edit(
        image=[("wide.png", _png("red", (96, 64)), "image/png"), ("blue.png", _png("blue"), "image/png")],
        prompt="the red one in the blue one",
        size="auto",
        extra_body=steps,
    )
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).size == (96, 64)
    too_small = httpx.post(
        f"{flux2_server.url}/v1/images/edits",
        data={"prompt": "x", **{k: str(v) for k, v in steps.items()}},
        files=[("image", ("tiny.png", _png("red", (32, 32)), "image/png"))],
    )
    assert too_small.status_code == 400 and "at least 64 pixels a side" in error_of(too_small)["message"]
