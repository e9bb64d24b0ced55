"""Which implementation the layer library's fused operations run: PyTorch's ops or Easel's Triton kernels.

Every fused layer (norm + scale + shift, gated residual, qk-norm + rotary, tanh-GELU) keeps its PyTorch code as the
reference and asks `use_triton(x)` whether to hand x to its kernel in `triton_kernels` instead. One process-wide
choice, as the attention backend is: the DiTs need no argument for it.
"""

import os

import torch

from easel.errors import EaselError
from easel.runtime.layers import triton_kernels
from easel.runtime.server_args import KERNEL_BACKENDS

_active = "torch"


def resolve_kernel_backend(name: str) -> str:
    """The implementation `name` selects, "torch" or "triton": "auto" is Triton on CUDA where it is installed."""
    if name not in KERNEL_BACKENDS:
        raise EaselError(f"Unknown kernel backend {name!r}; choose one of {', '.join(KERNEL_BACKENDS)}.")
    if name == "auto":
        return "triton" if torch.cuda.is_available() and triton_kernels.available() else "torch"
    if name == "triton":
        if not triton_kernels.available():
            raise EaselError("The triton kernel backend needs Triton: pip install triton.")
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            raise EaselError(
                "The triton kernel backend needs a CUDA GPU (on the CPU only Triton's interpreter runs its kernels: "
                "set TRITON_INTERPRET=1, for testing; it is far slower than PyTorch)."
            )
    return name


def set_kernel_backend(name: str) -> None:
    """Selects the implementation every later fused-layer call in this process uses."""
    global _active
    _active = resolve_kernel_backend(name)


def active_kernel_backend() -> str:
    """The implementation in use, "torch" or "triton"."""
    return _active


def use_triton(x: torch.Tensor) -> bool:
    """Whether a fused layer given x runs its Triton kernel: the backend is Triton and x is where kernels run."""
    return _active == "triton" and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
