"""The Triton kernel backend end to end: one tiny pipeline per family, with every fused layer in a Triton kernel
(Triton's CPU interpreter here), against Diffusers within the parity tolerance; and the backend's selection."""

import collections
import functools
import os

import diffusers
import pytest

from easel.errors import EaselError
from easel.runtime.layers import set_kernel_backend, triton_kernels
from easel.runtime.layers.kernel_backend import resolve_kernel_backend
from tests.parity import PipelineParityMixin

pytest.importorskip("triton")

KERNELS = ("layer_norm_scale_shift", "gated_residual", "qk_norm_rope", "gelu_tanh")  # the ones FLUX uses
TRITON = {"kernel_backend": "triton"}


def _counted(calls: collections.Counter, name: str, kernel, *args, **kwargs):
    calls[name] += 1
    return kernel(*args, **kwargs)


# Small, since the interpreter runs each kernel program in numpy: few tokens (a short prompt, a 32x48 image).
IMAGE = {"height": 32, "width": 48, "num_inference_steps": 2}


@pytest.fixture(autouse=True, scope="module")
def restore_torch_kernels():
    """The backend is process-wide; the modules after this one run PyTorch's ops again."""
    yield
    set_kernel_backend("torch")


class TestFluxTriton(PipelineParityMixin):
    kind = "flux"
    reference_cls = diffusers.FluxPipeline
    engine_options = TRITON
    cases = [{**IMAGE, "guidance_scale": 3.5, "max_sequence_length": 16}]

    def test_every_fused_layer_runs_its_kernel(self, pipelines, monkeypatch):
        calls = collections.Counter()
        for name in KERNELS:
            kernel = getattr(triton_kernels, name)
            monkeypatch.setattr(triton_kernels, name, functools.partial(_counted, calls, name, kernel))
        pipelines[0].generate(self.prompt, **self.cases[0])
        assert set(calls) == set(KERNELS)


class TestSD3Triton(PipelineParityMixin):
    kind = "sd3"
    reference_cls = diffusers.StableDiffusion3Pipeline
    engine_options = TRITON
    cases = [{**IMAGE, "guidance_scale": 4.5, "max_sequence_length": 16}]


class TestQwenImageTriton(PipelineParityMixin):
    kind = "qwen-image"
    reference_cls = diffusers.QwenImagePipeline
    engine_options = TRITON
    cases = [{**IMAGE, "negative_prompt": "blurry", "true_cfg_scale": 4.0}]


class TestZImageTriton(PipelineParityMixin):
    kind = "z-image"
    reference_cls = diffusers.ZImagePipeline
    engine_options = TRITON
    cases = [IMAGE]


class TestWanTriton(PipelineParityMixin):
    kind = "wan-t2v"
    reference_cls = diffusers.WanPipeline
    engine_options = TRITON
    cases = [{"height": 48, "width": 80, "num_frames": 5, "num_inference_steps": 2, "guidance_scale": 5.0}]


def test_auto_is_pytorch_without_a_gpu() -> None:
    assert resolve_kernel_backend("auto") == "torch"


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(EaselError, match="needs a CUDA GPU.*TRITON_INTERPRET=1"):
        resolve_kernel_backend("triton")
    assert os.environ.get("TRITON_INTERPRET") is None


def test_unknown_kernel_backend_names_the_choices() -> None:
    with pytest.raises(EaselError, match="auto, torch, triton"):
        set_kernel_backend("cuda")
