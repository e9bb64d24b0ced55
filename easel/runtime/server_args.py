"""`ServerArgs`: how the engine runs (where the model is, on which device, in which precision)."""

import dataclasses
import logging

import torch

from easel.configs.pipeline_configs.base import PipelineConfig
from easel.errors import InvalidInputError
from easel.runtime.cache.spec import parse_cache_spec

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPONENT_KINDS = ("dit", "vae", "text_encoder")
KERNEL_BACKENDS = ("auto", "torch", "triton")  # easel/runtime/layers/kernel_backend.py
DIT_QUANTIZATIONS = ("int8wo", "fp8")  # easel/runtime/layers/quantization.py


@dataclasses.dataclass
class ServerArgs:
    """Engine-wide settings, fixed when the model is loaded."""

    model_path: str
    device: str = "auto"  # "auto": the first CUDA device when there is one, else the CPU
    # "auto": bf16 for the DiT and text encoders on a GPU, fp32 for the VAE and for everything on the CPU.
    dit_precision: str = "auto"
    vae_precision: str = "auto"
    text_encoder_precision: str = "auto"
    # Single-device speed (README: Speed). "auto" attention: FlashAttention on a GPU where installed, else PyTorch's
    # SDPA; "auto" kernels: Easel's Triton kernels on CUDA, PyTorch's ops elsewhere.
    attention_backend: str = "auto"
    kernel_backend: str = "auto"
    enable_torch_compile: bool = False  # regional: each DiT block class compiled once, reused by every block
    dit_quantization: str | None = None  # lossy: "int8wo" (int8 weights, CPU and GPU) or "fp8" (Hopper / Ada GPUs)
    dit_layerwise_offload: bool = False  # DiT blocks in host memory, each copied to the device just before it runs
    cache: str = "none"  # the step-cache spec of requests that give none (easel/runtime/cache/spec.py)
    # Decode (and encode) in tiles, and one sample at a time, so that long or large videos do not need every
    # full-resolution frame in memory at once (Diffusers' VAE tiling and slicing).
    vae_tiling: bool = False
    vae_slicing: bool = False
    output_dir: str = "outputs"
    log_level: str = "warning"
    enable_stage_verification: bool = True
    progress_bar: bool = True
    # A parallel run (easel/runtime/distributed/layout.py completes and checks these): num_gpus ranks in all, laid out
    # cfg x ring x ulysses x tp; unset degrees are chosen from the DiT's heads and whether requests use CFG.
    num_gpus: int = 1
    ulysses_degree: int | None = None
    ring_degree: int | None = None
    enable_cfg_parallel: bool = False
    tp_size: int | None = None
    # Several nodes without torchrun: each starts num_gpus / nnodes local ranks, meeting at dist_init_addr.
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None  # HOST:PORT of node 0
    # The loaded model's static configuration; the loader sets it, the standard stages call its callbacks.
    pipeline_config: PipelineConfig | None = None

    def __post_init__(self) -> None:
        for kind in COMPONENT_KINDS:
            precision = getattr(self, f"{kind}_precision")
            if precision != "auto" and precision not in PRECISIONS:
                raise InvalidInputError(
                    f"{kind}_precision must be 'auto' or one of {sorted(PRECISIONS)}, got {precision!r}"
                )
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise InvalidInputError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {self.kernel_backend!r}")
        if self.dit_quantization not in (None, *DIT_QUANTIZATIONS):
            raise InvalidInputError(
                f"dit_quantization must be one of {DIT_QUANTIZATIONS} or None, got {self.dit_quantization!r}"
            )
        if self.dit_layerwise_offload and (self.dit_quantization == "fp8" or self.enable_torch_compile):
            # fp8 quantizes on the GPU, which the offloaded blocks never wholly are; compiled blocks between the
            # offload's copies ran on the CPU only, never with CUDA streams, so they are not offered together yet.
            other = "dit_quantization='fp8'" if self.dit_quantization == "fp8" else "enable_torch_compile"
            raise InvalidInputError(f"dit_layerwise_offload does not combine with {other}: choose one")
        parse_cache_spec(self.cache)  # a bad spec fails at start-up, not at the first request
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise InvalidInputError(f"unknown log level {self.log_level!r}")

    @property
    def torch_device(self) -> torch.device:
        """The device every component runs on."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def dtype_for(self, kind: str) -> torch.dtype:
        """The dtype of a component kind ("dit", "vae" or "text_encoder") on this device."""
        precision = getattr(self, f"{kind}_precision")
        if precision == "auto":
            on_gpu = self.torch_device.type == "cuda"
            return torch.bfloat16 if on_gpu and kind != "vae" else torch.float32
        return PRECISIONS[precision]
