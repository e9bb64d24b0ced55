"""`easel serve` with a tiny text-to-image model, driven through the official `openai` client (and httpx where the
client has no call): generations, bad input, the API key, metrics, a fault in a generation, the worker killed
mid-request, and 64 concurrent requests. One server serves the whole module; the tests run in order."""

import base64
import concurrent.futures
import io
import json
import os
import signal
import statistics
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.server_fixtures import ServerProcess, error_of, start_long_request

API_KEY = "sk-easel-test"
FAULT_PROMPT = "please fail inside the pipeline"
SMALL = {"num_inference_steps": 2}  # with size="64x64": milliseconds on the tiny model


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    server = ServerProcess(
        tiny_pipeline("flux"),
        "--api-key",
        API_KEY,
        "--max-queued-requests",
        "64",
        env={"EASEL_SERVE_FAULT_PROMPT": FAULT_PROMPT},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client(API_KEY)


@pytest.fixture(scope="module")
def http(server):
    with server.http(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        yield http


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_one_ready_line_health_and_models(server, client):
    assert server.stdout_lines == [f"easel: serving flux on {server.url}"]
    health = server.health()
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["restarts"] == 0
    assert [model.id for model in client.models.list()] == ["flux"]


def test_generation_b64_json(client):
    response = client.images.generate(prompt="a red circle", n=2, size="64x64", extra_body={**SMALL, "seed": 1})
    assert response.size == "64x64" and response.output_format == "png"
    images = [_decode(image.b64_json) for image in response.data]
    assert [(image.format, image.size) for image in images] == [("PNG", (64, 64))] * 2
    # The seed reaches the pipeline. Compared at one image a request: a batch of two may round differently in the
    # last bits (which kernels a CPU picks depends on the batch), enough to flip a PNG pixel.
    single = client.images.generate(prompt="a red circle", size="64x64", extra_body={**SMALL, "seed": 1})
    again = client.images.generate(prompt="a red circle", size="64x64", model="flux", extra_body={**SMALL, "seed": 1})
    other = client.images.generate(prompt="a red circle", size="64x64", extra_body={**SMALL, "seed": 2})
    assert again.data[0].b64_json == single.data[0].b64_json
    assert other.data[0].b64_json != single.data[0].b64_json


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_generation_url(client, http, output_format):
    response = client.images.generate(
        prompt="a lighthouse",
        size="64x48",
        response_format="url",
        output_format=output_format,
        extra_body={**SMALL, "negative_prompt": "fog", "true_cfg_scale": 2.0, "guidance_scale": 3.0},
    )
    content = http.get(response.data[0].url)
    assert content.status_code == 200 and content.headers["content-type"] == f"image/{output_format}"
    image = Image.open(io.BytesIO(content.content))
    assert (image.format, image.size) == (output_format.upper(), (64, 48))
    assert error_of(http.get("/v1/images/img_unknown/content"))["code"] == "not_found"


def test_openai_fields_tools_send(client):
    """OpenAI's own image fields are accepted (those choosing among its models' settings change nothing here), and
    output_compression sets JPEG's quality."""
    openai_fields = {"quality": "high", "style": "vivid", "user": "someone", "moderation": "low", "background": "auto"}
    sizes = {}
    for compression in (10, 95):
        response = client.images.generate(
            prompt="a red circle",
            size="64x64",
            output_format="jpeg",
            output_compression=compression,
            extra_body={**SMALL, "seed": 1},
            **openai_fields,
        )
        image = base64.b64decode(response.data[0].b64_json)
        assert Image.open(io.BytesIO(image)).format == "JPEG"
        sizes[compression] = len(image)
    assert sizes[10] < sizes[95]


def test_stream_with_partial_images(client):
    """stream=True through the official client: the partial images (the result the model predicts at evenly spaced
    steps, so they change), then the final image, equal to the same request without streaming."""
    request = {"prompt": "a red circle", "size": "64x64", "output_format": "png"}
    body = {"num_inference_steps": 9, "seed": 4}
    events = list(client.images.generate(**request, stream=True, partial_images=2, extra_body=body))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    assert all(event.size == "64x64" and event.output_format == "png" for event in events)
    previews = [np.asarray(_decode(event.b64_json)).astype(int) for event in events]
    assert np.abs(previews[0] - previews[1]).max() > 0
    plain = client.images.generate(**request, extra_body=body).data[0].b64_json
    assert events[-1].b64_json == plain
    quiet = list(client.images.generate(**request, stream=True, extra_body=body))  # no partial images asked
    assert [event.type for event in quiet] == ["image_generation.completed"] and quiet[0].b64_json == plain


def test_stream_reports_a_failure_as_an_error_event(http):
    body = {"prompt": FAULT_PROMPT, "size": "64x64", "stream": True, **SMALL}
    with http.stream("POST", "/v1/images/generations", json=body) as response:
        text = response.read().decode()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    (kind, data) = text.strip().split("\n")
    assert kind == "event: error" and "injected fault" in json.loads(data.removeprefix("data: "))["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_frees_the_worker(server, stream):
    request = {"prompt": "a long one", "size": "512x512", "num_inference_steps": 1000, "stream": stream}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.url}/v1/images/generations",
            json=request,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=1.5,  # far shorter than the request: the client gives up and closes the connection
        )
    deadline = time.monotonic() + 60
    while (health := server.health().json())["running"]:
        assert time.monotonic() < deadline, f"the abandoned request still runs: {health}"
        time.sleep(0.05)


def test_other_model_name_is_404(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.images.generate(prompt="a cat", model="dall-e-3", size="64x64", extra_body=SMALL)
    assert raised.value.body["code"] == "model_not_found" and "flux" in raised.value.body["message"]


@pytest.mark.parametrize(
    "body, words",
    [
        ('{"prompt": "a cat", "size": ', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"prompt": "a cat", "steps": 4}, "unknown parameter 'steps'"),  # neither OpenAI's nor Easel's
        ({"prompt": "a cat", "quality": "ultra"}, "quality"),
        ({"prompt": "a cat", "output_compression": 101}, "output_compression"),
        ({"prompt": "a cat", "background": "transparent", "output_format": "jpeg"}, "JPEG has no transparency"),
        ({"prompt": "a cat", "background": "transparent", "size": "64x64"}, "makes opaque images"),
        ({"prompt": "a cat", "partial_images": 2}, "only with stream=true"),
        ({"prompt": "a cat", "stream": True, "partial_images": 4}, "partial_images"),
        ({"size": "64x64"}, "prompt"),
        ({"prompt": "a cat", "size": "big"}, "size"),
        ({"prompt": "a cat", "size": "72x64", **SMALL}, "multiple of 16"),  # Easel's own validation, in the worker
        ({"prompt": "a cat", "size": "8192x64", **SMALL}, "between 16 and 4096"),
        ({"prompt": "a cat", "n": 0}, "n"),
        ({"prompt": "a cat", "n": 11}, "n"),
        ({"prompt": "a cat", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "a cat", "num_inference_steps": 1001}, "num_inference_steps"),
        ({"prompt": "a cat", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "a cat", "seed": -1}, "seed"),
        ({"prompt": "a cat", "response_format": "gif"}, "response_format"),
        ({"prompt": "   ", "size": "64x64", **SMALL}, "prompt is empty"),  # Easel's own validation again
    ],
)
def test_bad_input_is_400(http, body, words):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {}
    response = http.post("/v1/images/generations", **({"json": body} if not kwargs else kwargs))
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert words in error["message"] and error["type"] == "invalid_request_error"


def test_unsupported_tasks_are_400(http):
    edit = http.post("/v1/images/edits", files={"image": ("a.png", b"x")}, data={"prompt": "a cat"})
    assert edit.status_code == 400
    assert "text-to-image" in error_of(edit)["message"] and "/v1/images/generations" in error_of(edit)["message"]
    video = http.post("/v1/videos", files={"prompt": (None, "a cat")})
    assert video.status_code == 400 and "/v1/images/generations" in error_of(video)["message"]


def test_api_key(server, http):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").images.generate(prompt="a cat", size="64x64", extra_body=SMALL)
    assert httpx.get(f"{server.url}/health").status_code == 200  # only /v1 needs the key
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_fault_in_generation_is_500_then_serving_goes_on(client):
    with pytest.raises(openai.InternalServerError) as raised:
        client.images.generate(prompt=FAULT_PROMPT, size="64x64", extra_body=SMALL)
    assert raised.value.status_code == 500 and "injected fault" in raised.value.body["message"]
    assert len(client.images.generate(prompt="a cat", size="64x64", extra_body=SMALL).data) == 1


def test_metrics(server, http):
    page = httpx.get(f"{server.url}/metrics").text
    assert 'easel_requests_total{method="POST",route="/v1/images/generations",status="200"}' in page
    assert 'easel_requests_total{method="POST",route="/v1/images/generations",status="500"} 1' in page
    assert 'easel_requests_total{method="GET",route="/v1/models",status="401"}' in page
    for family in (
        "easel_queue_depth 0",
        "easel_running_requests 0",
        "easel_worker_up 1",
        "easel_worker_restarts_total 0",
    ):
        assert family in page
    for stage in ("queue", "TextEncodingStage", "DenoisingStage", "DecodingStage", "total"):
        assert f'easel_stage_seconds_bucket{{stage="{stage}",le="+Inf"}}' in page
    assert 'easel_request_seconds_count{route="/v1/images/generations"}' in page


def test_worker_killed_mid_request_fails_it_and_restarts(server, client):
    thread, outcome = start_long_request(client)
    busy = server.wait_health(lambda body: body["running"] == 1)
    start = time.perf_counter()
    assert server.health().status_code == 200 and time.perf_counter() - start < 1  # /health does not wait
    os.kill(busy["worker_pid"], signal.SIGKILL)
    thread.join(timeout=30)
    assert not thread.is_alive(), "the request held by the killed worker hangs"
    assert outcome["error"].status_code == 500 and "killed by signal 9" in outcome["error"].body["message"]

    restarting = server.health()
    assert restarting.status_code == 503 and restarting.json()["status"] == "restarting"
    with pytest.raises(openai.InternalServerError) as raised:  # 503 while the new worker loads
        client.images.generate(prompt="a cat", size="64x64", extra_body=SMALL)
    assert raised.value.status_code == 503
    back = server.wait_health(lambda body: body["status"] == "ok")
    assert back["restarts"] == 1 and back["worker_pid"] != busy["worker_pid"]
    assert "easel_worker_restarts_total 1" in httpx.get(f"{server.url}/metrics").text
    assert len(client.images.generate(prompt="a cat", size="64x64", extra_body=SMALL).data) == 1


def test_load_64_concurrent_requests_each_answered_once(server):
    count = 64

    def one(seed: int) -> tuple[int, float, str]:
        start = time.perf_counter()
        response = httpx.post(
            f"{server.url}/v1/images/generations",
            json={"prompt": "a small house", "size": "64x64", "seed": seed, **SMALL},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=300,
        )
        return response.status_code, time.perf_counter() - start, response.json()["data"][0]["b64_json"]

    before = httpx.get(f"{server.url}/metrics").text
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, range(count)))
    statuses = [status for status, _, _ in results]
    latencies = sorted(seconds for _, seconds, _ in results)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    p50, p99 = cuts[49], cuts[98]
    answered, failed = len(results), sum(status != 200 for status in statuses)
    print(f"\nload: sent {count}, answered {answered}, failed {failed}, p50 {p50:.2f} s, p99 {p99:.2f} s")
    assert answered == count and failed == 0
    assert len({image for _, _, image in results}) == count  # each its own seed's image: none mixed up or repeated
    served = _counter(httpx.get(f"{server.url}/metrics").text) - _counter(before)
    assert served == count  # the server answered each exactly once


def _counter(page: str) -> float:
    """Successful generations so far; the line is absent before the first (as when this test runs alone)."""
    line = 'easel_requests_total{method="POST",route="/v1/images/generations",status="200"} '
    _, found, rest = page.partition(line)
    return float(rest.split()[0]) if found else 0.0
