"""`easel serve --lora-dir` with a tiny FLUX model and two tiny LoRA files (PEFT and kohya, the latter also given as
--lora-path): loading and choosing adapters over HTTP, a request's own `lora`, merging, listing, the confinement to
--lora-dir, and the adapters loaded again into a restarted worker. One server serves the whole module; the tests
run in order."""

import base64
import io
import os
import signal

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from easel import DiffGenerator
from easel.runtime.entrypoints.openai.api_server import create_app
from easel.runtime.entrypoints.openai.protocol import APIError, VideoRequest, parse_form
from easel.runtime.entrypoints.openai.state import ServerState, ServeSettings
from easel.testing.lora import build_lora_file
from tests.server_fixtures import ServerProcess, error_of

REQUEST = {"prompt": "a red circle", "size": "64x64", "num_inference_steps": 2, "seed": 3}
STYLE = {"lora_nickname": "style", "lora_path": "style.safetensors", "strength": 0.8}


@pytest.fixture(scope="module")
def folders(tiny_pipeline, tmp_path_factory):
    """(model folder, --lora-dir, a folder outside it); the LoRA dir holds a PEFT file and a kohya one."""
    model = tiny_pipeline("flux")
    lora_dir, outside = tmp_path_factory.mktemp("loras"), tmp_path_factory.mktemp("outside")
    build_lora_file(model, lora_dir / "style.safetensors", layout="peft", seed=1)
    (lora_dir / "kohya").mkdir()
    build_lora_file(model, lora_dir / "kohya" / "detail.safetensors", layout="kohya", seed=2)
    build_lora_file(model, outside / "secret.safetensors", layout="peft", seed=3)
    (lora_dir / "link.safetensors").symlink_to(outside / "secret.safetensors")
    return model, lora_dir, outside


@pytest.fixture(scope="module")
def server(folders):
    model, lora_dir, _ = folders
    server = ServerProcess(
        model, "--lora-dir", str(lora_dir), "--lora-path", f"{lora_dir}/kohya/detail.safetensors:0.5"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images(http):
    """Images by name, made by the tests as they go, for the later ones to compare with."""
    return {"base": _generate(http, lora=[])}  # no adapter for this request: --lora-path's is active


def _generate(http: httpx.Client, **extra) -> np.ndarray:
    response = http.post("/v1/images/generations", json={**REQUEST, **extra})
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))))


def _post(http: httpx.Client, route: str, body: dict | None = None) -> dict:
    response = http.post(route, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _refused(response: httpx.Response, *words: str) -> dict:
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert all(word in error["message"] for word in words), error
    return error


def test_lora_path_at_start(http):
    listing = http.get("/v1/list_loras").json()
    assert listing["active"] == {"detail": 0.5}
    assert [(lora["name"], lora["path"]) for lora in listing["data"]] == [("detail", "kohya/detail.safetensors")]


def test_set_lora_loads_and_matches_load_lora_in_process(folders, http, images):
    answer = _post(http, "/v1/set_lora", STYLE)
    assert answer["active"] == {"style": 0.8} and answer["merged"] is False  # the named ones only: detail is off
    assert [lora["name"] for lora in answer["data"]] == ["detail", "style"]
    images["style"] = _generate(http)
    assert not np.array_equal(images["style"], images["base"])

    model, lora_dir, _ = folders
    generator = DiffGenerator.from_pretrained(model, progress_bar=False)
    generator.load_lora(lora_dir / "style.safetensors", strength=0.8)
    width, height = (int(side) for side in REQUEST["size"].split("x"))
    expected = generator.generate(
        REQUEST["prompt"], seed=REQUEST["seed"], width=width, height=height, num_inference_steps=2
    ).images[0]
    np.testing.assert_array_equal(images["style"], np.asarray(expected))


def test_several_adapters_and_a_requests_own_choice_does_not_leak(http, images):
    # Both are loaded: a null path, or the path it was loaded from, re-activates an adapter.
    body = {
        "lora_nickname": ["style", "detail"],
        "lora_path": [None, "kohya/detail.safetensors"],
        "strength": [0.7, 0.5],
    }
    assert _post(http, "/v1/set_lora", body)["active"] == {"style": 0.7, "detail": 0.5}
    images["both"] = _generate(http)
    assert not any(np.array_equal(images["both"], images[name]) for name in ("base", "style"))

    np.testing.assert_array_equal(_generate(http, lora={"style": 0.8}), images["style"])
    np.testing.assert_array_equal(_generate(http, lora=[]), images["base"])  # none, for this request
    detail = _generate(http, lora="detail")
    assert not any(np.array_equal(detail, images[name]) for name in ("base", "style", "both"))
    np.testing.assert_array_equal(_generate(http), images["both"])  # the server-wide choice is back
    assert http.get("/v1/list_loras").json()["active"] == {"style": 0.7, "detail": 0.5}


def _levels_apart(image: np.ndarray, other: np.ndarray) -> int:
    return int(np.abs(image.astype(int) - other.astype(int)).max())


def test_merge_then_unmerge(http, images):
    merged = _post(http, "/v1/merge_lora_weights")
    assert merged["merged"] is True and all(lora["merged"] for lora in merged["data"])
    # Merged weights round differently from the run-time path: close, not equal (and closer to the adapters asked
    # for than to any other choice).
    assert _levels_apart(_generate(http), images["both"]) <= 2
    remerged = _generate(http, lora={"style": 0.8})  # re-merged for it
    assert _levels_apart(remerged, images["style"]) <= 2 < _levels_apart(remerged, images["both"])
    assert _post(http, "/v1/unmerge_lora_weights")["merged"] is False
    np.testing.assert_array_equal(_generate(http), images["both"])


def test_list_loras(http):
    listing = http.get("/v1/list_loras").json()
    assert listing["object"] == "list" and listing["active"] == {"style": 0.7, "detail": 0.5}
    assert listing["merged"] is False
    by_name = {lora["name"]: lora for lora in listing["data"]}
    assert list(by_name) == ["detail", "style"]
    assert by_name["style"]["path"] == "style.safetensors"
    for lora in by_name.values():
        assert lora["targets"] == ["transformer"] and lora["active"] and not lora["merged"]
        assert lora["num_layers"] > 0 and lora["unmatched_keys"] == []


@pytest.mark.parametrize(
    "lora_path, words",
    [
        ("{outside}/secret.safetensors", ["outside the LoRA directory"]),  # absolute, outside
        ("../{outside_name}/secret.safetensors", ["outside the LoRA directory"]),
        ("link.safetensors", ["outside the LoRA directory"]),  # a link out
        ("missing.safetensors", ["no LoRA file 'missing.safetensors'"]),
    ],
)
def test_paths_outside_the_lora_dir_or_missing_are_refused(folders, http, lora_path, words):
    outside = folders[2]
    path = lora_path.format(outside=outside, outside_name=outside.name)
    _refused(http.post("/v1/set_lora", json={"lora_nickname": "other", "lora_path": path}), *words)
    listing = http.get("/v1/list_loras").json()
    assert listing["active"] == {"style": 0.7, "detail": 0.5} and len(listing["data"]) == 2  # nothing changed


def test_unknown_adapters_and_bad_bodies_are_refused(http):
    _refused(http.post("/v1/set_lora", json={"lora_nickname": "nope"}), "no LoRA named ['nope']")
    error = _refused(http.post("/v1/images/generations", json={**REQUEST, "lora": ["style", "nope"]}), "'nope'")
    assert error["code"] == "lora_not_found" and error["param"] == "lora"
    _refused(http.post("/v1/set_lora", json={"lora_nickname": ["a", "b"], "strength": [1.0]}), "strength")
    other_file = {"lora_nickname": "style", "lora_path": "kohya/detail.safetensors"}
    _refused(http.post("/v1/set_lora", json=other_file), "already loaded from another file")
    _refused(http.post("/v1/images/generations", json={**REQUEST, "lora": {"style": "strong"}}), "lora")
    assert http.get("/v1/list_loras").json()["active"] == {"style": 0.7, "detail": 0.5}


def test_a_restarted_worker_gets_the_adapters_back(server, http, images):
    os.kill(server.health().json()["worker_pid"], signal.SIGKILL)
    assert server.wait_health(lambda body: body["status"] == "ok" and body["restarts"] == 1)
    assert http.get("/v1/list_loras").json()["active"] == {"style": 0.7, "detail": 0.5}
    np.testing.assert_array_equal(_generate(http), images["both"])


def test_without_lora_dir_no_file_is_loaded():
    # Refused by the front end before any worker is involved: the app runs here without its lifespan.
    state = ServerState(ServeSettings(model_path="unused", engine_options={}))
    response = TestClient(create_app(state)).post(
        "/v1/set_lora", json={"lora_nickname": "a", "lora_path": "a.safetensors"}
    )
    state.store.close()
    assert error_of(response)["code"] == "lora_dir_not_set"
    _refused(response, "start it with --lora-dir")


def test_lora_in_a_multipart_form():
    def lora(text: str):
        return parse_form(VideoRequest, {"prompt": "a cat", "lora": text}).lora

    assert (lora("style"), lora('["a", "b"]'), lora('{"a": 0.5}')) == ("style", ["a", "b"], {"a": 0.5})
    with pytest.raises(APIError, match="lora"):
        lora("[oops")
