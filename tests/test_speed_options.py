"""The engine's speed options end to end on a tiny FLUX: int8 weights with their loss measured by the quality check,
layerwise offload, and the clear errors for what does not combine."""

import platform

import numpy as np
import pytest
import torch

from easel import DiffGenerator
from easel.cli.main import main
from easel.errors import InvalidInputError
from easel.runtime.host_allocator import keep_freed_host_memory
from easel.runtime.layers.exact_path import exact_layers
from easel.runtime.layers.quantization import Int8WeightOnlyLinear
from easel.runtime.pipelines_core.stages.denoising import DenoisingStage
from easel.runtime.server_args import ServerArgs

REQUEST = {"prompt": "a red circle", "height": 32, "width": 48, "num_inference_steps": 2, "seed": 0}


@pytest.fixture(scope="module")
def exact_images(tiny_pipeline) -> np.ndarray:
    generator = DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False)
    return generator.generate(output_type="np", **REQUEST).images


@pytest.fixture(scope="module")
def int8_generator(tiny_pipeline) -> DiffGenerator:
    return DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False, dit_quantization="int8wo")


def test_int8_weights_report_their_loss_through_the_quality_check(int8_generator, exact_images):
    transformer = int8_generator.pipeline.get_module("transformer")
    assert any(isinstance(module, Int8WeightOnlyLinear) for module in transformer.modules())
    result = int8_generator.generate(output_type="np", quality_check=True, **REQUEST)
    assert 30 < result.quality.psnr_db < float("inf")  # lossy, but slightly
    # The quality check's reference is the unquantized model's output, bit for bit.
    with exact_layers():
        exact = int8_generator.generate(output_type="np", **REQUEST).images
    assert np.array_equal(exact, exact_images)
    assert result.quality.max_abs_diff == pytest.approx(float(np.abs(result.images - exact).max()), abs=1e-6)


def test_quantized_dit_refuses_lora(int8_generator, tmp_path):
    with pytest.raises(InvalidInputError, match="LoRA does not combine with dit_quantization"):
        int8_generator.load_lora(tmp_path / "any.safetensors")


def test_layerwise_offload_changes_no_pixel(tiny_pipeline, exact_images):
    generator = DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False, dit_layerwise_offload=True)
    assert np.array_equal(generator.generate(output_type="np", **REQUEST).images, exact_images)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dit_quantization": "int4"}, "dit_quantization must be one of"),
        ({"kernel_backend": "cuda"}, "kernel_backend must be one of"),
        ({"dit_layerwise_offload": True, "dit_quantization": "fp8"}, "does not combine with dit_quantization='fp8'"),
        ({"dit_layerwise_offload": True, "enable_torch_compile": True}, "does not combine with enable_torch_compile"),
    ],
)
def test_options_that_cannot_run_fail_at_start(options, message):
    with pytest.raises(InvalidInputError, match=message):
        ServerArgs(model_path="unused", **options)


def test_cli_says_fp8_needs_a_gpu(tiny_pipeline, tmp_path, capsys):
    argv = ["generate", "--model-path", str(tiny_pipeline("flux")), "--prompt", "a red circle", "--height", "32"]
    argv += ["--width", "32", "--num-inference-steps", "1", "--output-path", str(tmp_path / "out.png")]
    assert main([*argv, "--dit-quantization", "fp8"]) != 0
    err = capsys.readouterr().err
    assert "Hopper or Ada GPU" in err and "int8wo" in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_enable_torch_compile_compiles_every_block_at_load(tiny_pipeline):
    generator = DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False, enable_torch_compile=True)
    blocks = generator.pipeline.get_module("transformer").repeated_blocks()
    assert blocks and all(hasattr(block.forward, "_torchdynamo_orig_callable") for block in blocks)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_host_allocator_keeps_freed_memory_on_glibc():
    assert keep_freed_host_memory()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a CUDA matter")
def test_denoising_loop_has_no_host_sync(tiny_pipeline, monkeypatch):
    """Every denoising step queues its work without waiting for the GPU (a sync stalls the launch queue)."""
    generator = DiffGenerator.from_pretrained(tiny_pipeline("flux"), device="cuda", progress_bar=False)
    denoise = DenoisingStage.forward

    def without_syncs(self, batch, server_args):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any synchronizing call raises
        try:
            return denoise(self, batch, server_args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(DenoisingStage, "forward", without_syncs)
    generator.generate(output_type="np", **REQUEST)
