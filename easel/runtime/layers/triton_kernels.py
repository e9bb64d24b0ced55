"""Fused Triton kernels for the DiT layers: adaLN-modulated norms, gated residuals, qk-norm + rotary, tanh GELU.

Each function computes what its PyTorch counterpart in layernorm.py / rotary.py does, in one pass over memory: it
reads its inputs once, computes in float32 and rounds once, to the input's dtype, where the eager version rounds
after every op. Row kernels run one program per row of the last dimension, padded to a power of two and masked, so
any width works. With TRITON_INTERPRET=1 set before this module is imported, the kernels run on CPU tensors.
"""

# Keeps the kernels' `tl.constexpr` annotations unevaluated (Triton reads them as strings), so the module still
# imports when triton is missing.
from __future__ import annotations

import torch

from easel.errors import EaselError

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


def available() -> bool:
    """Whether triton is installed, so that the kernels in this module can run."""
    return triton is not None


def _jit(fn):
    # Without triton the kernels stay plain functions that are never launched: every entry point checks first.
    return triton.jit(fn) if triton is not None else fn


def _require_triton() -> None:
    if triton is None:
        raise EaselError("the fused Triton kernels need triton: pip install triton")


def _row_launch(width: int) -> dict[str, int]:
    """Launch options of a one-program-per-row kernel: the padded block, and warps that grow with it."""
    block = triton.next_power_of_2(width)
    # As in Triton's LayerNorm tutorial: about 256 elements per warp, at most 8 warps.
    return {"BLOCK": block, "num_warps": min(max(block // 256, 1), 8)}


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # The kernels index the last dimension as contiguous; the leading ones are passed as strides, so views of
    # them (slices, transposes, chunks) need no copy.
    return t if t.stride(-1) == 1 else t.contiguous()


def _per_token(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """t (B, D) or (B, L, D) as a (B, L, D) view with a unit stride last; a (B, D) t repeats over tokens (stride 0)."""
    t = _unit_last_stride(t)
    return (t[:, None] if t.ndim == 2 else t).expand(shape)


@_jit
def _norm_scale_shift_kernel(
    x_ptr,
    weight_ptr,
    bias_ptr,
    shift_ptr,
    scale_ptr,
    out_ptr,
    L,
    D,
    x_stride_b,
    x_stride_l,
    shift_stride_b,
    shift_stride_l,
    scale_stride_b,
    scale_stride_l,
    eps,
    CENTER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per token: row = sample * L + token. int64 so offsets of large video latents cannot overflow.
    row = tl.program_id(0).to(tl.int64)
    sample, token = row // L, row % L
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(x_ptr + sample * x_stride_b + token * x_stride_l + cols, mask=mask, other=0.0).to(tl.float32)  # (D,)
    if CENTER:
        # LayerNorm; RMSNorm is the same without centering. The padding must stay 0 for the variance.
        x = tl.where(mask, x - tl.sum(x, axis=0) / D, 0.0)
    y = x * tl.math.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    if weight_ptr is not None:
        y = y * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        y = y + tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + sample * shift_stride_b + token * shift_stride_l + cols, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + sample * scale_stride_b + token * scale_stride_l + cols, mask=mask, other=0.0)
    y = y * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
    tl.store(out_ptr + row * D + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _norm_scale_shift(x, weight, bias, shift, scale, eps, center: bool) -> torch.Tensor:
    _require_triton()
    x = _unit_last_stride(x)  # (B, L, D)
    B, L, D = x.shape
    shift, scale = _per_token(shift, x.shape), _per_token(scale, x.shape)  # (B, L, D) views
    out = torch.empty((B, L, D), dtype=x.dtype, device=x.device)
    _norm_scale_shift_kernel[(B * L,)](
        x,
        None if weight is None else weight.contiguous(),
        None if bias is None else bias.contiguous(),
        shift,
        scale,
        out,
        L,
        D,
        *x.stride()[:2],
        *shift.stride()[:2],
        *scale.stride()[:2],
        eps,
        CENTER=center,
        **_row_launch(D),
    )
    return out


def layer_norm_scale_shift(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """LayerNorm of x (B, L, D), affine if weight/bias (D,) are given, then `* (1 + scale) + shift` ((B, [L,] D))."""
    return _norm_scale_shift(x, weight, bias, shift, scale, eps, center=True)


def rms_norm_scale_shift(
    x: torch.Tensor, weight: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """RMSNorm of x (B, L, D) times weight (D,) (None: no affine), then `* (1 + scale) + shift` ((B, [L,] D))."""
    return _norm_scale_shift(x, weight, None, shift, scale, eps, center=False)


@_jit
def _gated_residual_kernel(
    residual_ptr,
    gate_ptr,
    branch_ptr,
    out_ptr,
    L,
    D,
    residual_stride_b,
    residual_stride_l,
    gate_stride_b,
    gate_stride_l,
    branch_stride_b,
    branch_stride_l,
    BLOCK: tl.constexpr,
):
    # One program per token, as the norms: a (B, D) gate is then one stride-0 row for all of a sample's tokens.
    row = tl.program_id(0).to(tl.int64)
    sample, token = row // L, row % L
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    residual = tl.load(residual_ptr + sample * residual_stride_b + token * residual_stride_l + cols, mask=mask)
    gate = tl.load(gate_ptr + sample * gate_stride_b + token * gate_stride_l + cols, mask=mask)
    branch = tl.load(branch_ptr + sample * branch_stride_b + token * branch_stride_l + cols, mask=mask)
    out = residual.to(tl.float32) + gate.to(tl.float32) * branch.to(tl.float32)
    tl.store(out_ptr + row * D + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def gated_residual(residual: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero's output `residual + gate * branch` as a new tensor: residual/branch (B, L, D), gate (B, [L,] D)."""
    _require_triton()
    residual, branch = _unit_last_stride(residual), _unit_last_stride(branch)  # (B, L, D)
    B, L, D = residual.shape
    gate = _per_token(gate, residual.shape)  # (B, L, D) view
    out = torch.empty((B, L, D), dtype=residual.dtype, device=residual.device)
    _gated_residual_kernel[(B * L,)](
        residual,
        gate,
        branch,
        out,
        L,
        D,
        *residual.stride()[:2],
        *gate.stride()[:2],
        *branch.stride()[:2],
        **_row_launch(D),
    )
    return out


@_jit
def _rms_norm_rope_kernel(
    x_ptr,
    weight_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    L,
    H,
    D,
    x_stride_b,
    x_stride_l,
    x_stride_h,
    cos_stride_b,
    cos_stride_l,
    sin_stride_b,
    sin_stride_l,
    eps,
    BLOCK: tl.constexpr,
):
    # One program per head vector: row = (sample * L + token) * H + head.
    row = tl.program_id(0).to(tl.int64)
    sample, token, head = row // (L * H), row // H % L, row % H
    # The head's channels laid out as (pair, 2), so that a pair's two channels sit in one row of the block.
    cols = tl.arange(0, BLOCK // 2)[:, None] * 2 + tl.arange(0, 2)[None, :]
    mask = cols < D
    x = tl.load(x_ptr + sample * x_stride_b + token * x_stride_l + head * x_stride_h + cols, mask=mask, other=0.0)
    x = x.to(tl.float32)  # (D/2, 2)
    y = x * tl.math.rsqrt(tl.sum(x * x) / D + eps)
    y = y * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # F.rms_norm hands the rotary a tensor rounded to x's dtype; rounding here too keeps half-precision results
    # equal to the eager norm-then-rotate instead of about an ulp apart.
    y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
    cos = tl.load(cos_ptr + sample * cos_stride_b + token * cos_stride_l + cols, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + sample * sin_stride_b + token * sin_stride_l + cols, mask=mask, other=0.0).to(tl.float32)
    # Each pair (real, imag) times e^{i angle}: y * cos + (-imag, real) * sin, as apply_rotary_emb.
    real, imag = tl.split(y)
    out = y * cos + tl.join(-imag, real) * sin
    tl.store(out_ptr + row * D + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _rms_norm_rope(x, weight, cos, sin, eps) -> torch.Tensor:
    x = _unit_last_stride(x)  # (B, L, H, D)
    B, L, H, D = x.shape
    if D % 2:
        raise ValueError(f"rotary dimension must be even, got {D}")
    # cos/sin (L, D) are shared by the batch: a stride-0 batch dimension.
    cos, sin = (_unit_last_stride(t).expand(B, L, D) for t in (cos, sin))  # (B, L, D) views
    out = torch.empty((B, L, H, D), dtype=x.dtype, device=x.device)
    _rms_norm_rope_kernel[(B * L * H,)](
        x,
        weight.contiguous(),
        cos,
        sin,
        out,
        L,
        H,
        D,
        *x.stride()[:3],
        *cos.stride()[:2],
        *sin.stride()[:2],
        eps,
        **_row_launch(D),
    )
    return out


def qk_norm_rope(
    query: torch.Tensor,
    key: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of each head of query and key (B, L, H, Dh) by its weight (Dh,), then the interleaved rotary by
    float32 cos/sin (L, Dh) or (B, L, Dh): `apply_rotary_emb(F.rms_norm(x, (Dh,), weight, eps), cos, sin)`."""
    _require_triton()
    # One launch per tensor, each reading its heads once: query and key have their own weights and strides (they
    # are often views of one fused projection), which one launch would have to branch between per program.
    return _rms_norm_rope(query, q_weight, cos, sin, eps), _rms_norm_rope(key, k_weight, cos, sin, eps)


@_jit
def _gelu_tanh_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    # 0.5 * x * (1 + tanh(u)) is x * sigmoid(2u): no tanh needed (tl has none on every backend), and no
    # cancellation in 1 + tanh(u) for negative x. 1.5957691216057308 is 2 * sqrt(2 / pi).
    out = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


_GELU_BLOCK = 1024


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh-approximated GELU of x, any shape: F.gelu(x, approximate="tanh")."""
    _require_triton()
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    _gelu_tanh_kernel[(triton.cdiv(n, _GELU_BLOCK),)](x, out, n, BLOCK=_GELU_BLOCK)
    return out
