"""Bad input: each gives a clear error of ours; the CLI prints it without a traceback and writes nothing."""

import json
import shutil

import pytest

from easel.cli.main import main


@pytest.fixture
def run_cli(tmp_path, capsys):
    """Runs `easel generate` in-process with small defaults; returns (exit code, stderr, files written)."""
    out_dir = tmp_path / "out"

    def run(*args: str, model: str | None = None):
        argv = ["generate", "--prompt", "a red circle", "--height", "32", "--width", "32"]
        argv += ["--num-inference-steps", "1", "--output-path", str(out_dir), *args]
        if model is not None:
            argv += ["--model-path", model]
        code = main(argv)
        written = sorted(p.name for p in out_dir.rglob("*")) if out_dir.exists() else []
        return code, capsys.readouterr().err, written

    return run


@pytest.fixture
def model_copy(tiny_pipeline, tmp_path):
    """A private copy of the tiny FLUX folder that a test may damage."""
    return shutil.copytree(tiny_pipeline("flux"), tmp_path / "model")


def test_missing_model_path(run_cli, tmp_path):
    code, err, written = run_cli(model=str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    assert written == []


def test_folder_without_model_index(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err, _ = run_cli(model=str(tmp_path / "empty"))
    assert code == 2 and "no model_index.json" in err


def test_unknown_pipeline_class_lists_supported(run_cli, model_copy):
    index_path = model_copy / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "NoSuchPipeline"
    index_path.write_text(json.dumps(index))
    code, err, _ = run_cli(model=str(model_copy))
    assert code == 2 and "NoSuchPipeline" in err and "FluxPipeline" in err and "FLUX.1-dev" in err


def test_truncated_safetensors(run_cli, model_copy):
    weights = next((model_copy / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err, written = run_cli(model=str(model_copy))
    assert code == 2 and weights.name in err and "truncated" in err
    assert written == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--height", "50"], "height must be a multiple of 16"),
        (["--width", "8192"], "width must be between 16 and 4096"),
        (["--num-inference-steps", "0"], "num_inference_steps must be between 1"),
        (["--guidance-scale", "-1"], "guidance_scale must not be negative"),
        (["--prompt", "  "], "the prompt is empty"),
    ],
)
def test_bad_request(run_cli, tiny_pipeline, args, message):
    code, err, written = run_cli(*args, model=str(tiny_pipeline("flux")))
    assert code == 2 and message in err and "Traceback" not in err
    assert written == []


def test_unwritable_output_path(run_cli, tiny_pipeline, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err, _ = run_cli("--output-path", str(blocker / "image.png"), model=str(tiny_pipeline("flux")))
    assert code == 2 and "cannot create the output folder" in err
    assert blocker.read_text() == "not a folder"


def test_input_image_problems_are_named(run_cli, tiny_pipeline, tmp_path):
    kontext = str(tiny_pipeline("flux-kontext"))
    code, err, _ = run_cli(model=kontext)
    assert code == 2 and "takes 1 input image(s), got 0" in err
    code, err, _ = run_cli("--image-path", str(tmp_path / "missing.png"), model=kontext)
    assert code == 2 and "missing.png does not exist" in err
    (tmp_path / "notes.png").write_text("not an image")
    code, err, _ = run_cli("--image-path", str(tmp_path / "notes.png"), model=kontext)
    assert code == 2 and "notes.png is not an image" in err
    code, err, written = run_cli("--image-path", str(tmp_path / "notes.png"), model=str(tiny_pipeline("flux")))
    assert code == 2 and "takes 0 input image(s), got 1" in err and "Traceback" not in err
    assert written == []


def test_too_few_steps_for_the_scheduler(run_cli, tiny_pipeline):
    # Qwen-Image's scheduler stretches its schedule to a terminal sigma, which one step leaves undefined (0 / 0).
    code, err, written = run_cli("--num-inference-steps", "1", model=str(tiny_pipeline("qwen-image")))
    assert code == 2 and "too few for this model's scheduler; use at least 2" in err
    assert written == []
