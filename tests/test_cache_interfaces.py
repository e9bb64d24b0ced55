"""Step caching and the quality check as users reach them: `easel generate --cache/--quality-check`, `easel serve
--cache` (the server-wide default), and the per-request `cache` and `quality_check` fields of the HTTP API with the
`easel` report in its answers. One server on the demo model (9 DiT blocks) serves the module's HTTP tests."""

import asyncio
import concurrent.futures
import re
import subprocess
import sys

import httpx
import openai
import pytest

from easel.cli.main import main
from easel.demo import DEMO_MODEL_PATH
from easel.runtime.cache.spec import GRAMMAR, PRESETS, parse_cache_spec
from easel.runtime.entrypoints.openai.messages import Done
from easel.runtime.entrypoints.openai.protocol import APIError, ImageRequest, VideoRequest, parse_form
from easel.runtime.entrypoints.openai.video_jobs import VideoJob
from tests.server_fixtures import ServerProcess, error_of

SERVER_DEFAULT = "dbcache:threshold=0.3,warmup=2"
PROMPT = "a red circle at the top left"
STEPS = {"num_inference_steps": 8}  # the demo model's 64x64: a fraction of a second a request
QUALITY_KEYS = {"psnr_db", "ssim", "max_abs_diff", "seconds", "exact_seconds"}


# --- easel generate ---------------------------------------------------------------------------------------------
def test_generate_prints_the_cache_and_the_quality_check(tmp_path, capsys):
    target = tmp_path / "circle.png"
    args = ["generate", "--prompt", PROMPT, "--num-inference-steps", "8", "--output-path", str(target)]
    assert main([*args, "--cache", "dbcache:threshold=0.3,warmup=2", "--quality-check"]) == 0
    assert target.is_file()
    wrote, cache, quality = capsys.readouterr().out.strip().splitlines()
    assert wrote.startswith(f"wrote {target}")
    match = re.fullmatch(
        r"cache dbcache:threshold=0.3,warmup=2: cond computed (\d+) / skipped (\d+), uncond computed (\d+) / "
        r"skipped (\d+)",
        cache,
    )
    assert match, cache
    computed, skipped = int(match[1]), int(match[2])
    assert computed + skipped == 8 and skipped > 0
    assert quality.startswith("quality vs exact:") and "PSNR" in quality and "SSIM" in quality


def test_generate_with_a_bad_spec_is_one_error_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "never.png"
    assert main(["generate", "--prompt", PROMPT, "--cache", "bogus", "--output-path", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("easel: error: --cache 'bogus': unknown cache method 'bogus'")
    assert GRAMMAR in err and "Traceback" not in err
    assert not target.exists() and not list(tmp_path.iterdir())


def test_serve_with_a_bad_spec_fails_at_start():
    result = subprocess.run(
        [sys.executable, "-m", "easel", "serve", "--port", "0", "--cache", "dbcache:threshold=7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--cache 'dbcache:threshold=7': dbcache threshold must lie in" in result.stderr
    assert GRAMMAR in result.stderr and "Traceback" not in result.stderr
    assert "serving" not in result.stdout


def test_help_names_the_presets():
    for command in ("generate", "serve"):
        text = subprocess.run(
            [sys.executable, "-m", "easel", command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "--cache SPEC" in text and "METHOD[:key=value,...]" in text
        assert all(preset in text for preset in PRESETS)
        assert ("--quality-check" in text) == (command == "generate")


# --- the request models (the multipart routes: edits and videos) and the video job ------------------------------
@pytest.mark.parametrize("model", [ImageRequest, VideoRequest])
def test_form_fields_are_validated(model):
    body = parse_form(model, {"prompt": "a cat", "cache": "balanced", "quality_check": "true"})
    assert body.sampling_params()["cache"] == "balanced" and body.sampling_params()["quality_check"] is True
    assert parse_form(model, {"prompt": "a cat"}).sampling_params()["cache"] is None  # the server's default
    with pytest.raises(APIError) as raised:
        parse_form(model, {"prompt": "a cat", "cache": "dbcache:fn=0"})
    error = raised.value
    assert error.status == 400 and error.param == "cache" and error.code == "invalid_value"
    assert error.message.startswith("cache: dbcache needs fn >= 1") and GRAMMAR in error.message


def test_video_job_reports_the_cache_once_completed(tmp_path):
    job = VideoJob("video_1", "wan", "a cat", "64x64", 5, 16, tmp_path / "video_1.mp4")
    assert job.to_object().easel is None
    cache = {"spec": SERVER_DEFAULT, "branches": {"cond": {"computed": 3, "skipped": 2}}}
    loop = asyncio.new_event_loop()
    try:
        outcome = loop.create_future()
        outcome.set_result(Done("video_1", [], 64, 64, 5, {"total": 1.0}, cache=cache, quality={"ssim": 0.9}))
        job.finish(outcome)
    finally:
        loop.close()
    shown = job.to_object().model_dump()
    assert shown["status"] == "completed" and shown["easel"] == {"cache": cache, "quality": {"ssim": 0.9}}


# --- easel serve ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    # One request at a time: batched, a request's guidance passes share a forward, whose rounding differs from the
    # exact path's by ~1e-7, and test_quality_check wants the uncached answer to be the exact path bit for bit.
    server = ServerProcess(DEMO_MODEL_PATH, "--cache", SERVER_DEFAULT, "--max-batch-size", "1")
    yield server
    server.stop()


def _generate(http: httpx.Client, **fields) -> dict:
    response = http.post("/v1/images/generations", json={"prompt": PROMPT, **STEPS, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["easel"]) == {"cache", "quality"}
    return body


def _skipped(cache: dict) -> list[int]:
    assert set(cache["branches"]) == {"cond", "uncond"}  # the demo model runs CFG: two branches
    assert all(counts["computed"] + counts["skipped"] == 8 for counts in cache["branches"].values())
    return [counts["skipped"] for counts in cache["branches"].values()]


def test_request_without_cache_takes_the_server_default(http):
    body = _generate(http)
    assert body["easel"]["cache"]["spec"] == SERVER_DEFAULT and min(_skipped(body["easel"]["cache"])) > 0
    assert body["easel"]["quality"] is None
    assert _generate(http, cache=None)["easel"]["cache"]["spec"] == SERVER_DEFAULT  # null is the default too


def test_per_request_cache(http):
    capped = _generate(http, cache="dbcache:threshold=0.3,warmup=2,max_cached=1")["easel"]["cache"]
    assert capped["spec"] == "dbcache:threshold=0.3,warmup=2,max_cached=1" and _skipped(capped) == [1, 1]
    preset = _generate(http, cache="balanced")["easel"]["cache"]
    assert preset["spec"] == str(parse_cache_spec("balanced"))
    exact = _generate(http, cache="none")
    assert exact["easel"] == {"cache": None, "quality": None}
    assert exact["data"][0]["b64_json"] != _generate(http)["data"][0]["b64_json"]  # the default skipped steps


def test_quality_check(http):
    plain = _generate(http, seed=3)
    checked = _generate(http, seed=3, quality_check=True)
    quality = checked["easel"]["quality"]
    assert QUALITY_KEYS <= set(quality)
    assert quality["psnr_db"] > 10 and 0 < quality["ssim"] <= 1 and quality["seconds"] > 0 < quality["exact_seconds"]
    assert checked["easel"]["cache"] == plain["easel"]["cache"]
    assert checked["data"] == plain["data"]  # the check compares; it does not change the answer
    # Without a cache the exact path is this path: identical (JSON has no inf: null).
    identical = _generate(http, seed=3, cache="none", quality_check=True)["easel"]["quality"]
    assert identical["psnr_db"] is None and identical["max_abs_diff"] == 0


def test_official_client_sees_the_report(server):
    response = server.client().images.generate(prompt=PROMPT, extra_body={**STEPS, "cache": "fast"})
    assert response.model_extra["easel"]["cache"]["spec"] == str(parse_cache_spec("fast"))


@pytest.mark.parametrize(
    "cache, words",
    [
        ("nope", "unknown cache method 'nope'"),
        ("dbcache:fn=0", "dbcache needs fn >= 1"),
        ("dbcache:threshold", "'threshold' is not key=value"),
    ],
)
def test_bad_spec_is_400_with_the_grammar(http, cache, words):
    response = http.post("/v1/images/generations", json={"prompt": PROMPT, "cache": cache})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == "cache" and error["code"] == "invalid_value" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("cache: ") and words in error["message"] and GRAMMAR in error["message"]


def test_errors_only_the_worker_finds_are_400(http):
    response = http.post("/v1/images/generations", json={"prompt": PROMPT, **STEPS, "cache": "dbcache:fn=50"})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert "fn=50" in error["message"] and "9 blocks" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert _generate(http)["easel"]["cache"]["spec"] == SERVER_DEFAULT  # the worker serves on


def test_unknown_fields_are_still_refused(http):
    response = http.post("/v1/images/generations", json={"prompt": PROMPT, "caching": "fast"})
    assert response.status_code == 400 and error_of(response)["message"] == "unknown parameter 'caching'"
    response = http.post("/v1/images/generations", json={"prompt": PROMPT, "quality_check": "maybe"})
    assert response.status_code == 400 and error_of(response)["param"] == "quality_check"


def test_requests_back_to_back_each_give_what_they_give_alone(server, http):
    requests = [{"prompt": "a red circle at the top left"}, {"prompt": "a blue square at the bottom right", "seed": 5}]
    alone = [_generate(http, **request) for request in requests]
    assert alone[0]["data"] != alone[1]["data"]
    # Queued together, so that the worker runs them one right after the other, in whatever order.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda i: _generate(http, **requests[i % 2]), range(4)))
    for i, body in enumerate(together):
        assert body["data"] == alone[i % 2]["data"] and body["easel"] == alone[i % 2]["easel"]
    health = server.health().json()
    assert health["running"] == 0 and health["queued"] == 0


def _metric(page: str, line: str) -> float:
    _, found, rest = page.partition(line + " ")
    return float(rest.split()[0]) if found else 0.0


def test_a_quality_check_is_one_request_and_one_generation_in_the_metrics(server, http):
    ok = 'easel_requests_total{method="POST",route="/v1/images/generations",status="200"}'
    queued = 'easel_stage_seconds_count{stage="queue"}'
    before = httpx.get(f"{server.url}/metrics").text
    _generate(http, quality_check=True)
    after = httpx.get(f"{server.url}/metrics").text
    assert _metric(after, ok) - _metric(before, ok) == 1
    assert _metric(after, queued) - _metric(before, queued) == 1  # two runs inside one job
    assert "easel_queue_depth 0" in after and "easel_running_requests 0" in after


def test_openai_client_error_for_a_bad_spec(server):
    with pytest.raises(openai.BadRequestError) as raised:
        server.client().images.generate(prompt=PROMPT, extra_body={"cache": "steps:every=0"})
    assert raised.value.body["param"] == "cache" and "every must be 1 or more" in raised.value.body["message"]
