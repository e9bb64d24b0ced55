"""Weight quantization of a loaded DiT's block linears: int8 weight-only, or fp8 weights and activations.

The repeated blocks hold nearly all of a DiT's weights (FLUX.1-dev: 11.8 of 11.9 B parameters), so quantizing their
linears is what saves memory; the embedders and the final layer, the layers nearest the model's inputs and output and
the most sensitive to error, stay in full precision at a cost of well under 1% of the weights. Inside a block every
linear is quantized, the adaLN modulation ones included: they act on one (B, D) vector per sample, so they cost no
time, but in FLUX.1 they hold a third of a double-stream block's weights and over a quarter of all, too many to
leave in full precision (quantizing them too took a random medium FLUX's int8wo output error from 0.93% to 1.19%).

- "int8wo": int8 weights with one symmetric scale per output channel, activations untouched. The forward
  dequantizes the weight and runs the ordinary matmul. `torch._weight_int8pack_mm` computes the same on the CPU
  but measured 7x (bf16) to 40x (fp32) slower than the dequantized matmul (torch 2.13, AVX-512 Xeon, a 768 x 512
  by 512 x 2048 matmul), so every device takes the one dequantizing path. Block memory drops ~4x from fp32 (~2x
  from bf16); the time is the fp matmul's plus the dequantization's (measured +40% for that matmul, +10% (fp32)
  to +25% (bf16) for a whole medium FLUX forward on the CPU), so this is a memory option, not a speed one.
- "fp8": float8_e4m3fn weights with one scale per output channel, activations quantized per token at run time, the
  matmul by `torch._scaled_mm` in fp8 (NVIDIA GPUs of compute capability 8.9+: Ada, Hopper and newer).

Quantization runs once the checkpoint is loaded and replaces each linear by a module whose state dict holds the
quantized weight under new names (`qweight`, `weight_scale`), so a full-precision checkpoint loaded into it fails
loudly rather than being cast. Tensor parallelism composes by construction (untested): each rank quantizes its own
shard (per-output-channel scales are local to a row, and a row-parallel shard's partial sums are dequantized before
the all-reduce).

Each quantized linear keeps its full-precision weight in host memory, where it costs no device memory, so that a
quality check can run the exact path (`exact_weights`) and measure what quantizing lost. On the CPU that copy is the
original weight itself: there int8wo is the tested path of the GPU feature, not a memory saving.

LoRA does not compose: adapters hook `nn.Linear` layers and merge into their float weight, and the quantized modules
are neither. `quantize_dit` refuses a DiT with adapters attached; adapters loaded after quantization find no
quantized layer to match (their keys come back unmatched), so a pipeline should refuse LoRA on a quantized DiT.
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from easel.errors import InvalidInputError
from easel.runtime.distributed.communication import all_reduce
from easel.runtime.distributed.parallel_state import get_tp_world_size
from easel.runtime.layers.linear import RowParallelLinear
from easel.runtime.layers.lora import LoRALinear
from easel.runtime.server_args import DIT_QUANTIZATIONS

INT8_MAX = 127
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
FP8_MIN_CAPABILITY = (8, 9)  # Ada; _scaled_mm's row-wise scaling needs it
FP8_ALIGNMENT = 16  # _scaled_mm on CUDA needs both dimensions of the weight divisible by 16
_exact = False  # set by `exact_weights`: every quantized linear computes with its full-precision weight


@contextlib.contextmanager
def exact_weights() -> Iterator[None]:
    """Runs the block with every quantized linear's full-precision weight: a quality check's exact path."""
    global _exact
    previous, _exact = _exact, True
    try:
        yield
    finally:
        _exact = previous


class _QuantizedLinear(nn.Module):
    """What the quantized linears share: the bias, and the all-reduce of a row-parallel layer's partial sums."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        # Not a buffer: outside the state dict, and left on the host by `.to(device)`.
        self.exact_weight = linear.weight.detach().to("cpu")
        # Under tensor parallelism a row-parallel rank holds some input features: its output is a partial sum.
        self.row_parallel = isinstance(linear, RowParallelLinear)

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        """The matmul's output (…, N) without bias to the layer's: summed over TP ranks if row-parallel, biased."""
        if self.row_parallel and get_tp_world_size() > 1:
            out = all_reduce(out, "tp")
        return out + self.bias if self.bias is not None else out

    def exact_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unquantized layer's output, from the host copy of its weight."""
        return self._finish(F.linear(x, self.exact_weight.to(x.device, x.dtype)))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8WeightOnlyLinear(_QuantizedLinear):
    """y = x @ (W_int8 * scale)^T + b: int8 weights with a scale per output channel; activations in full precision."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        qweight, scale = quantize_int8_rowwise(linear.weight.detach())
        self.register_buffer("qweight", qweight)  # (N, K) int8
        self.register_buffer("weight_scale", scale)  # (N,) in the original weight dtype

    def dequantized_weight(self) -> torch.Tensor:
        """W_int8 * scale: (N, K) in the original weight dtype; int8 values are exact in any float dtype."""
        return self.qweight.to(self.weight_scale.dtype) * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exact:
            return self.exact_forward(x)
        return self._finish(F.linear(x, self.dequantized_weight()))


class Fp8Linear(_QuantizedLinear):
    """y = dequant(fp8(x) @ fp8(W)^T) + b: per-output-channel weight scales, per-token activation scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        qweight, scale = quantize_fp8_rowwise(linear.weight.detach())
        self.register_buffer("qweight", qweight)  # (N, K) float8_e4m3fn, row-major: its .t() is column-major
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, N) float32, as _scaled_mm's scale_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exact:
            return self.exact_forward(x)
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        x_fp8, x_scale = quantize_fp8_rowwise(x2)  # (M, K) row-major, (M, 1) float32
        # Row-wise scaling outputs bf16 only; a model in another dtype gets its own back.
        out = torch._scaled_mm(
            x_fp8, self.qweight.t(), scale_a=x_scale, scale_b=self.weight_scale, out_dtype=torch.bfloat16
        )
        return self._finish(out.to(x.dtype).reshape(*x.shape[:-1], self.out_features))


def quantize_int8_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_int8 (N, K), scale (N,)) with W ~ W_int8 * scale[:, None], scale = max |row| / 127.

    The scale is rounded to the weight's dtype before the int8 values are chosen, so it is stored exactly and its
    rounding adds no error; an all-zero row gets scale 1 (its int8 values are all zero anyway).
    """
    amax = weight.abs().amax(dim=1).float()  # (N,)
    scale = torch.where(amax > 0, amax / INT8_MAX, 1.0).to(weight.dtype)
    qweight = (weight.float() / scale.float()[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return qweight, scale


def quantize_fp8_rowwise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_fp8 (R, C) e4m3, scale (R, 1) float32) with t ~ t_fp8 * scale, scale = max |row| / 448: a weight's
    output channels, or an activation's tokens."""
    amax = t.abs().amax(dim=1, keepdim=True).float()  # (R, 1)
    # A row of zeros (padding tokens) would divide by zero; any positive scale quantizes it to zeros.
    scale = torch.where(amax > 0, amax / FP8_MAX, 1.0)
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def fp8_reference_linear(x: torch.Tensor, layer: Fp8Linear) -> torch.Tensor:
    """What `layer` computes, in fp32 on any device: the same fp8 values and scales, dequantized, then matmul'd.

    The spec of the fp8 path where `_scaled_mm` cannot run, and the check of the scaling math where it can.
    """
    x_fp8, x_scale = quantize_fp8_rowwise(x.reshape(-1, x.shape[-1]))
    weight = layer.qweight.float() * layer.weight_scale.t()  # (N, K)
    out = (x_fp8.float() * x_scale) @ weight.t()  # (M, N)
    if layer.bias is not None:
        out = out + layer.bias.float()
    return out.reshape(*x.shape[:-1], layer.out_features)


def quantize_dit(dit: nn.Module, method: str) -> int:
    """Quantizes the linears of the DiT's repeated blocks in place with `method` ("int8wo" or "fp8"); returns how
    many. Call it on a loaded DiT: for "fp8", one already on its GPU (compute capability 8.9+)."""
    if method not in DIT_QUANTIZATIONS:
        raise InvalidInputError(f"unknown quantization {method!r}; choose one of {list(DIT_QUANTIZATIONS)}")
    blocks = dit.repeated_blocks()
    linears = [(block, name, module) for block in blocks for name, module in block.named_modules()]
    linears = [(block, name, module) for block, name, module in linears if isinstance(module, nn.Linear)]
    if not linears:
        return 0
    _check_no_lora(dit)
    if any(linear.weight.is_meta for _, _, linear in linears):
        raise ValueError("the DiT's weights are not loaded yet (meta tensors): quantize after loading")
    if method == "fp8":
        _check_fp8_device(linears[0][2].weight.device)
        # _scaled_mm tiles 16 x 16; a rare odd-shaped linear keeps its full-precision weight.
        linears = [entry for entry in linears if _fp8_fits(entry[2])]
    make = Int8WeightOnlyLinear if method == "int8wo" else Fp8Linear
    for block, name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        setattr(block.get_submodule(parent_name), child, make(linear))
    return len(linears)


def _fp8_fits(linear: nn.Linear) -> bool:
    return linear.in_features % FP8_ALIGNMENT == 0 and linear.out_features % FP8_ALIGNMENT == 0


def _check_fp8_device(device: torch.device) -> None:
    # ROCm GPUs report CUDA capabilities too, but their fp8 is another format (e4m3fnuz).
    nvidia = device.type == "cuda" and torch.version.hip is None
    capability = torch.cuda.get_device_capability(device) if nvidia else None
    if capability is None or capability < FP8_MIN_CAPABILITY:
        where = f"a GPU of compute capability {capability}" if capability else f"the {device} device"
        raise InvalidInputError(
            f"fp8 quantization needs the DiT on an NVIDIA Hopper or Ada GPU (compute capability 8.9 or newer), "
            f"but it is on {where}; use int8wo (int8 weight-only) quantization instead"
        )


def _check_no_lora(dit: nn.Module) -> None:
    """Refuses a DiT with LoRA adapters attached: their hooks sit on the linears quantization would replace."""
    for name, module in dit.named_modules():
        hooks = module._forward_hooks.values()
        if any(isinstance(getattr(hook, "__self__", None), LoRALinear) for hook in hooks):
            raise InvalidInputError(
                f"the DiT has LoRA adapters attached (e.g. on {name}); LoRA does not compose with quantization: "
                "unload the adapters (unload_lora) before quantizing, or run this model unquantized"
            )
