"""Step-level continuous batching (easel/runtime/entrypoints/openai/step_scheduler.py): requests of mixed sizes,
step counts, guidance and seeds share DiT forwards, join and leave between steps, and each gets what it would get
alone; cancellation frees rows at once; LoRA choices and step caches batch only where that stays exact.

The scheduler runs in this process here, its answers collected from a stand-in for the worker's result pipe; the
server tests at the end drive `easel serve` over HTTP.
"""

import base64
import concurrent.futures
import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from easel import DiffGenerator
from easel.demo import DEMO_MODEL_PATH
from easel.runtime.entrypoints.openai.messages import BatchLimits, Done, Failed, Progress, WorkerJob
from easel.runtime.entrypoints.openai.step_scheduler import StepScheduler
from easel.runtime.pipelines_core.shared_forward import predict_together
from easel.testing.lora import build_lora_file
from tests.server_fixtures import ServerProcess

TOLERANCE = 1e-4  # CPU fp32: batched against alone

# Eight requests that differ in every way that batches: size, steps, guidance, seed, prompt.
FLUX_REQUESTS = [
    {"prompt": "a red circle", "seed": 1, "num_inference_steps": 4, "width": 64, "height": 64},
    {"prompt": "a blue square", "seed": 2, "num_inference_steps": 6, "width": 64, "height": 64},
    {"prompt": "a red circle", "seed": 3, "num_inference_steps": 3, "width": 96, "height": 64},
    {"prompt": "green", "seed": 4, "num_inference_steps": 5, "width": 64, "height": 64, "guidance_scale": 7.0},
    {"prompt": "a cat", "seed": 5, "num_inference_steps": 4, "width": 96, "height": 64, "true_cfg_scale": 3.0},
    {"prompt": "a dog", "seed": 6, "num_inference_steps": 2, "width": 64, "height": 64, "true_cfg_scale": 4.0},
    {"prompt": "two dogs", "seed": 7, "num_inference_steps": 4, "width": 64, "height": 96, "num_outputs_per_prompt": 2},
    {"prompt": "a red circle", "seed": 1, "num_inference_steps": 5, "width": 64, "height": 64},
]
NEGATIVE = {"negative_prompt": "blurry"}  # with true_cfg_scale > 1, FLUX.1-dev runs real CFG: two rows a sample
WAN_REQUESTS = [
    {"prompt": "a wave", "seed": 1, "num_inference_steps": 3, "width": 32, "height": 32, "num_frames": 5},
    {"prompt": "a tree", "seed": 2, "num_inference_steps": 4, "width": 32, "height": 32, "num_frames": 5},
    {"prompt": "a wave", "seed": 3, "num_inference_steps": 2, "width": 48, "height": 32, "num_frames": 5},
    {"prompt": "rain", "seed": 4, "num_inference_steps": 3, "width": 32, "height": 32, "num_frames": 9},
    {"prompt": "snow", "seed": 5, "num_inference_steps": 4, "width": 32, "height": 32, "guidance_scale": 1.0},
    {"prompt": "fire", "seed": 6, "num_inference_steps": 3, "width": 32, "height": 32, "guidance_scale": 8.0},
    {"prompt": "a wave", "seed": 7, "num_inference_steps": 2, "width": 32, "height": 48, "num_frames": 5},
    {"prompt": "sun", "seed": 8, "num_inference_steps": 3, "width": 32, "height": 32, "num_frames": 5},
]


def _with_negative(request: dict) -> dict:
    return {**request, **NEGATIVE} if request.get("true_cfg_scale", 1.0) > 1.0 else request


@pytest.fixture(scope="module")
def flux(tiny_pipeline):
    return DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False)


@pytest.fixture(scope="module")
def wan(tiny_pipeline):
    return DiffGenerator.from_pretrained(tiny_pipeline("wan-t2v"), progress_bar=False)


def _together(generator: DiffGenerator, requests: list[dict], joins: list[int]) -> list[np.ndarray]:
    """The requests' outputs as float arrays, stepped together; request i joins at iteration joins[i]. Arrivals of
    an iteration are encoded together, and the requests that finish in one are decoded together."""
    started: dict[int, object] = {}
    results: dict[int, object] = {}
    iteration = 0
    while len(results) < len(requests):
        arrivals = [i for i, join in enumerate(joins) if join == iteration]
        begun = generator.start_many([{"output_type": "np", **requests[i]} for i in arrivals])
        started.update(zip(arrivals, begun, strict=True))
        running = [i for i in started if i not in results]
        runs = [started[i].run for i in running]
        with torch.inference_mode():
            for run, predictions in zip(runs, predict_together(runs), strict=True):
                run.advance(predictions)
        finished = [i for i in running if started[i].run.done]
        results.update(zip(finished, generator.finish_many([started[i] for i in finished]), strict=True))
        iteration += 1
    return [_array(results[i]) for i in range(len(requests))]


def _array(result) -> np.ndarray:
    return np.asarray(result.frames if result.frames is not None and len(result.images) == 0 else result.images)


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_batched_equals_alone(family, request):
    generator = request.getfixturevalue(family)
    requests = [_with_negative(r) for r in (FLUX_REQUESTS if family == "flux" else WAN_REQUESTS)]
    joins = [0, 0, 0, 1, 1, 2, 3, 5]  # staggered: some join while others are mid-way, some after others left
    together = _together(generator, requests, joins)
    for params, batched in zip(requests, together, strict=True):
        alone = _array(generator.generate(output_type="np", **params))
        assert batched.shape == alone.shape
        assert np.abs(batched - alone).max() <= TOLERANCE, params
    # A test that could not fail would prove nothing: another prompt moves the output far beyond the tolerance.
    moved = _array(generator.generate(output_type="np", **{**requests[0], "prompt": "something else entirely"}))
    assert np.abs(moved - together[0]).max() > 10 * TOLERANCE


def test_passes_share_forwards(flux):
    """Requests of one size share a forward (CFG rows included); another size gets its own."""
    calls = []
    transformer = flux.pipeline.modules["transformer"]
    original = transformer.forward
    transformer.forward = lambda **kwargs: calls.append(kwargs["hidden_states"].shape[0]) or original(**kwargs)
    try:
        small = flux.start_many([_with_negative(r) for r in (FLUX_REQUESTS[0], FLUX_REQUESTS[1], FLUX_REQUESTS[5])])
        (wide,) = flux.start_many([FLUX_REQUESTS[2]])
        with torch.inference_mode():
            predict_together([s.run for s in [*small, wide]])
    finally:
        transformer.forward = original
    assert sorted(calls) == [1, 4]  # two 64x64 requests + one with CFG (two rows) in one forward; 96x64 alone


class _Results:
    """Stands in for the worker's result pipe."""

    def __init__(self):
        self.messages: list = []

    def send(self, message) -> None:
        self.messages.append(message)

    def of(self, job_id: str, kind=None) -> list:
        return [m for m in self.messages if m.job_id == job_id and (kind is None or isinstance(m, kind))]


def _job(index: int, **params) -> WorkerJob:
    return WorkerJob(f"job{index}", params, images=[])


def _scheduler(generator, **limits) -> tuple[StepScheduler, _Results]:
    results = _Results()
    return StepScheduler(generator, BatchLimits(**limits), results), results


def _drain(scheduler: StepScheduler, limit: int = 200) -> None:
    for _ in range(limit):
        if scheduler.idle:
            return
        scheduler.iterate()
    raise AssertionError("the scheduler did not finish its jobs")


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(int)


def test_scheduler_answers_equal_alone(flux):
    """Through the worker's scheduler, PNG answers equal the alone ones within one level of 8 bits."""
    scheduler, results = _scheduler(flux, max_size=4)
    requests = [_with_negative(r) for r in FLUX_REQUESTS]
    for i, params in enumerate(requests[:3]):
        scheduler.waiting.append(_job(i, **params))
    scheduler.iterate()
    for i, params in enumerate(requests[3:], start=3):  # arrive mid-batch; at most 4 run at once
        scheduler.waiting.append(_job(i, **params))
    assert len(scheduler.running) == 3
    scheduler.iterate()
    assert len(scheduler.running) == 4
    _drain(scheduler)
    for i, params in enumerate(requests):
        (answer,) = results.of(f"job{i}", Done)
        progress = results.of(f"job{i}", Progress)
        assert [p.step for p in progress] == list(range(1, params["num_inference_steps"] + 1))
        alone = flux.generate(**params).images
        assert len(answer.images) == len(alone)
        for data, image in zip(answer.images, alone, strict=True):
            assert np.abs(_pixels(data) - np.asarray(image).astype(int)).max() <= 1


def test_video_jobs_run_together(wan, tmp_path):
    """Video jobs batch like images, each writing its MP4 (their pixels against alone: test_batched_equals_alone)."""
    scheduler, results = _scheduler(wan)
    jobs = [_job(i, **WAN_REQUESTS[i]) for i in (0, 1, 3)]
    for job in jobs:
        job.video_path = str(tmp_path / f"{job.id}.mp4")
    scheduler.waiting.extend(jobs)
    scheduler.iterate()
    assert len(scheduler.running) == 3
    _drain(scheduler)
    for job in jobs:
        (answer,) = results.of(job.id, Done)
        assert answer.num_frames == job.params["num_frames"] and (tmp_path / f"{job.id}.mp4").stat().st_size > 0


def test_token_budget(flux):
    """A request whose rows would take the batch past --max-batch-tokens waits (and those behind it) until there is
    room; one larger than the budget runs alone."""
    scheduler, results = _scheduler(flux, max_size=8, max_tokens=32)  # 64x64: 8x8 latents, 16 tokens a row
    wide, large = {**FLUX_REQUESTS[0], "width": 96}, {**FLUX_REQUESTS[0], "width": 128, "height": 128}
    jobs = [_job(0, **FLUX_REQUESTS[0]), _job(1, **wide), _job(2, **FLUX_REQUESTS[0]), _job(3, **large)]
    scheduler.waiting.extend(jobs)  # 16, 24, 16 and 64 tokens
    scheduler.iterate()
    assert [e.job.id for e in scheduler.running] == ["job0"]
    _drain(scheduler)
    assert [m.job_id for m in results.messages if isinstance(m, Done)] == ["job0", "job1", "job2", "job3"]
    first_steps = [results.messages.index(results.of(job.id, Progress)[0]) for job in jobs]
    dones = [results.messages.index(results.of(job.id, Done)[0]) for job in jobs]
    assert all(first_steps[i + 1] > dones[i] for i in range(3))  # each ran after the one before had left


def test_cancel_frees_rows_at_once(flux):
    scheduler, results = _scheduler(flux, max_size=4)
    long, short = _job(0, **{**FLUX_REQUESTS[0], "num_inference_steps": 50}), _job(1, **FLUX_REQUESTS[1])
    scheduler.waiting.extend([long, short])
    scheduler.iterate()
    scheduler.cancel("job0")
    assert [e.job.id for e in scheduler.running] == ["job1"]
    (failure,) = results.of("job0", Failed)
    assert failure.status == 499 and "cancelled at step 1 of 50" in failure.message
    queued = _job(2, **FLUX_REQUESTS[0])
    scheduler.waiting.append(queued)
    scheduler.cancel("job2")
    assert results.of("job2", Failed)[0].message == "cancelled while queued"
    _drain(scheduler)
    assert len(results.of("job0", Progress)) == 1 and results.of("job1", Done) and not results.of("job2", Done)


def test_a_failing_request_leaves_the_others(flux, monkeypatch):
    monkeypatch.setenv("EASEL_SERVE_FAULT_PROMPT", "explode")
    scheduler, results = _scheduler(flux)
    scheduler.waiting.extend([_job(0, **FLUX_REQUESTS[0]), _job(1, **{**FLUX_REQUESTS[1], "prompt": "explode"})])
    bad = _job(2, **{**FLUX_REQUESTS[0], "width": 65})
    scheduler.waiting.append(bad)
    _drain(scheduler)
    assert results.of("job0", Done)
    assert results.of("job1", Failed)[0].status == 500 and "injected fault" in results.of("job1", Failed)[0].message
    assert results.of("job2", Failed)[0].status == 400  # bad input fails at its start, before it joins


def test_step_cache_is_per_request(flux):
    """A cached request batches beside uncached ones (its passes run in forwards of their own) and equals itself
    alone, cache counts included."""
    cached = {**FLUX_REQUESTS[1], "cache": "steps:every=2,warmup=1"}
    scheduler, results = _scheduler(flux)
    scheduler.waiting.extend([_job(0, **FLUX_REQUESTS[0]), _job(1, **cached), _job(2, **FLUX_REQUESTS[7])])
    _drain(scheduler)
    alone = flux.generate(**cached)
    (answer,) = results.of("job1", Done)
    assert answer.cache == alone.cache and answer.cache["branches"]["cond"]["skipped"] > 0
    assert np.abs(_pixels(answer.images[0]) - np.asarray(alone.images[0]).astype(int)).max() <= 1


def test_lora_choices_batch_apart(tiny_pipeline, tmp_path):
    folder = tiny_pipeline("flux")
    lora = build_lora_file(folder, tmp_path / "style.safetensors", layout="peft", seed=1)
    generator = DiffGenerator.from_pretrained(folder, progress_bar=False)
    generator.load_lora(lora, name="style")
    generator.set_lora(None)  # server-wide: none
    scheduler, results = _scheduler(generator)
    jobs = [_job(0, **FLUX_REQUESTS[0]), _job(1, **FLUX_REQUESTS[1]), _job(2, **FLUX_REQUESTS[7])]
    jobs[1].lora = {"style": 1.0}
    scheduler.waiting.extend(jobs)
    scheduler.iterate()
    assert [e.job.id for e in scheduler.running] == ["job0"]  # job1's adapters wait for job0 to finish; job2 behind
    _drain(scheduler)
    for job in jobs:
        generator.set_lora(job.lora)
        alone = generator.generate(**job.params).images[0]
        (answer,) = results.of(job.id, Done)
        assert np.abs(_pixels(answer.images[0]) - np.asarray(alone).astype(int)).max() <= 1
    generator.set_lora(None)
    assert scheduler.applied is None or generator.list_loras()[0]["active"] is False


# --- easel serve -----------------------------------------------------------------------------------------------
def test_num_gpus_with_batching_is_refused():
    command = [sys.executable, "-m", "easel", "serve", "--num-gpus", "2", "--max-batch-size", "4"]
    answer = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 2 and "Traceback" not in answer.stderr
    assert "--max-batch-size 4 does not combine with --num-gpus 2" in answer.stderr


@pytest.fixture(scope="module")
def demo_server():
    server = ServerProcess(DEMO_MODEL_PATH, "--max-batch-size", "8")
    yield server
    server.stop()


def test_concurrent_requests_equal_alone(demo_server):
    client = demo_server.client()
    prompts = [f"a {color} circle on the {side}" for color in ("red", "blue") for side in ("left", "right")]
    bodies = [{"seed": i, "num_inference_steps": 4 + i} for i in range(len(prompts))]

    def generate(prompt: str, body: dict) -> np.ndarray:
        image = client.images.generate(prompt=prompt, response_format="b64_json", extra_body=body).data[0]
        return _pixels(base64.b64decode(image.b64_json))

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(generate, prompts, bodies))
    assert demo_server.health().json()["max_batch_size"] == 8
    for prompt, body, batched in zip(prompts, bodies, together, strict=True):
        assert np.abs(generate(prompt, body) - batched).max() <= 1


def test_disconnected_client_frees_its_rows(demo_server):
    body = {"prompt": "a red circle", "num_inference_steps": 1000, "size": "64x64"}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{demo_server.url}/v1/images/generations", json=body, timeout=2)
    health = demo_server.wait_health(lambda h: h["running"] == 0, timeout=30)
    assert health["queued"] == 0
