"""`easel generate` runs every supported family on its tiny folder and writes what it promised."""

import pytest
from PIL import Image

from easel.cli.main import main
from tests.parity import input_image

# kind -> the extra CLI arguments its family needs to run small and fast.
RUNS = {
    "flux": [],
    "flux-schnell": [],
    "flux-kontext": ["--image-path", "{image}", "--set", "max_area=1536"],
    "sd3": ["--guidance-scale", "4.5"],
    "z-image": ["--guidance-scale", "4.0"],
    "qwen-image": ["--negative-prompt", "blurry"],
    "qwen-image-edit": ["--image-path", "{image}"],
    "qwen-image-edit-plus": ["--image-path", "{image}", "{image}"],
    "qwen-image-layered": ["--image-path", "{image}", "--set", "layers=2"],
}


@pytest.mark.parametrize("kind", RUNS)
def test_generate_writes_images(kind, tiny_pipeline, tmp_path, capsys):
    source = tmp_path / "input.png"
    input_image().save(source)
    extra = [arg.format(image=source) for arg in RUNS[kind]]
    args = ["generate", "--model-path", str(tiny_pipeline(kind)), "--prompt", "a red circle", "--seed", "1"]
    args += ["--height", "32", "--width", "48", "--num-inference-steps", "2"]
    assert main([*args, *extra, "--output-path", str(tmp_path / "out")]) == 0
    written = sorted((tmp_path / "out").iterdir())
    assert written and all(Image.open(path).size[0] > 0 for path in written)
    assert len(written) == (2 if kind == "qwen-image-layered" else 1)
    assert "wrote" in capsys.readouterr().out
