"""`easel serve --num-gpus 2`: the worker runs as two ranks; a request is served, one rank killed mid-request fails
that request cleanly, and the server restarts both ranks and serves the next one, with no rank left behind."""

import base64
import io
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from easel import DiffGenerator
from tests.server_fixtures import ServerProcess, process_alive, start_long_request

SMALL = {"num_inference_steps": 2, "seed": 5}  # with size="64x64": milliseconds on the tiny model


def _ranks_of(worker_pid: int) -> list[int]:
    """The rank processes the worker spawned (not multiprocessing's resource tracker), in start order."""
    ranks = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline") as cmdline:
                command = cmdline.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if parent == worker_pid and "spawn_main" in command:
            ranks.append(int(entry))
    return sorted(ranks)


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    server = ServerProcess(tiny_pipeline("flux"), "--num-gpus", "2")
    yield server
    server.stop()


def _image(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int16)


def test_two_ranks_serve_a_request_like_one_process(server, tiny_pipeline):
    assert server.stdout_lines == [f"easel: serving flux on {server.url}"]
    assert "easel: 2 ranks as cfg 1 x ring 1 x ulysses 2 x tp 1" in server.stderr_text()
    health = server.health().json()
    assert health["status"] == "ok" and len(_ranks_of(health["worker_pid"])) == 2
    served = server.client().images.generate(prompt="a cat", size="64x64", extra_body=SMALL)
    one = DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False)
    expected = np.asarray(one.generate("a cat", height=64, width=64, **SMALL).images[0], dtype=np.int16)
    assert np.abs(_image(served.data[0].b64_json) - expected).max() <= 1


def test_a_rank_killed_mid_request_fails_it_and_the_ranks_restart(server):
    client = server.client()
    old_worker = server.health().json()["worker_pid"]
    old_ranks = _ranks_of(old_worker)
    thread, outcome = start_long_request(client)
    server.wait_health(lambda body: body["running"] == 1)
    time.sleep(0.5)  # inside the denoising loop
    started = time.monotonic()
    os.kill(old_ranks[-1], signal.SIGKILL)  # the last one started: rank 1
    thread.join(timeout=60)
    assert not thread.is_alive(), "the request held by the killed rank hangs"
    print(f"PARALLEL SERVE KILL: the request failed {time.monotonic() - started:.2f} s after rank 1 was killed")
    message = outcome["error"].body["message"]
    assert outcome["error"].status_code == 500 and f"rank 1 (pid {old_ranks[-1]}) was killed by signal 9" in message

    back = server.wait_health(lambda body: body["status"] == "ok" and body["restarts"] == 1, timeout=120)
    assert back["worker_pid"] != old_worker
    assert not any(process_alive(pid) for pid in [old_worker, *old_ranks])  # the whole old run is gone
    new_ranks = _ranks_of(back["worker_pid"])
    assert len(new_ranks) == 2
    assert len(client.images.generate(prompt="a cat", size="64x64", extra_body=SMALL).data) == 1
    server.stop()
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in new_ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(process_alive(pid) for pid in new_ranks), "a rank outlived its server"
