"""The fused Triton kernels against the PyTorch layers they replace; without a GPU, in Triton's CPU interpreter.

The interpreter runs every program in numpy, a few milliseconds each, so the shapes are small (tens of rows) but
odd: widths that are not powers of two, single tokens, leading dimensions that are strided views.
"""

import importlib.util
import os
import sys

import torch

if not torch.cuda.is_available():
    # Triton reads this variable as it decorates each @triton.jit function: its own library's (tl.sum, tl.sigmoid)
    # at `import triton`, ours at the kernels' module import; so it must be set before both. It stays set for the
    # rest of the session, harmlessly: nothing else can compile Triton kernels on a machine without a GPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from easel.errors import EaselError  # noqa: E402
from easel.runtime.layers import apply_rotary_emb, modulate, rope_frequencies  # noqa: E402
from easel.runtime.layers import triton_kernels as tk  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Whether the variable above took effect. tests/conftest.py imports easel.testing, which imports triton (through
# torch._dynamo) and these kernels (through the layers) before this module runs, so under pytest the variable has to
# be in the environment, or set in conftest.py.
INTERPRETED = isinstance(tl.sum, InterpretedFunction) and isinstance(tk._gelu_tanh_kernel, InterpretedFunction)
if DEVICE == "cpu" and not INTERPRETED:
    pytest.skip(
        "no GPU, and triton or the kernels' module was imported before TRITON_INTERPRET=1 was set, so the kernels "
        "were built for a GPU and cannot run on the CPU: run with TRITON_INTERPRET=1 in the environment",
        allow_module_level=True,
    )

# bf16 tolerances against the eager layers: twice the largest error measured over this file's cases (interpreter,
# Triton 3.9). The eager layers round to bf16 after every op, the kernels once at the end, so they differ by about
# an ulp of the outputs: up to 0.0625 at the |values| of 8 to 16 that these cases reach.
BF16_ATOL = {"layer_norm": 0.125, "rms_norm": 0.125, "gated_residual": 0.0625, "qk_norm_rope": 0.125, "gelu": 0.0625}

EPS = 1e-6
# (B, L, D): a lone token at an odd width, and batches at widths that need masking (100, 33) or not (64).
ROW_SHAPES = [(1, 1, 33), (2, 7, 100), (2, 19, 64)]


def _randn(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE).to(dtype)


def _strided_tokens(t: torch.Tensor) -> torch.Tensor:
    """t's values as a view whose token dimension (1) skips every other row, as slices of a longer sequence do."""
    padded = torch.zeros(t.shape[0], 2 * t.shape[1], *t.shape[2:], dtype=t.dtype, device=t.device)
    padded[:, ::2] = t
    return padded[:, ::2]


def _modulation(B: int, L: int, D: int, per_token: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """shift and scale, (B, D) or (B, L, D), as chunks of one projection: views with a stride of 2 D."""
    shape = (B, L, 2 * D) if per_token else (B, 2 * D)
    return (0.5 * _randn(*shape, dtype=dtype)).chunk(2, dim=-1)


def _modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # The library's adaLN modulation, extended to per-token (B, L, D) shift and scale.
    return modulate(normed, shift, scale) if shift.ndim == 2 else normed * (1 + scale) + shift


def _check(actual: torch.Tensor, expected: torch.Tensor, kernel: str, exact32: torch.Tensor | None = None) -> None:
    """actual vs the eager layer's output expected; for bf16, also vs the float32 result exact32, as one rounding."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
        return
    torch.testing.assert_close(actual.float(), expected.float(), atol=BF16_ATOL[kernel], rtol=0)
    if exact32 is not None:
        # Rounded once from float32: within half a bf16 ulp (2^-8 relative) of the float32 result, or within one
        # in the interpreter, whose float32 -> bf16 casts truncate where GPUs round to nearest.
        torch.testing.assert_close(actual.float(), exact32, atol=1e-5, rtol=2**-7 if INTERPRETED else 2**-8)


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
PER_TOKEN = pytest.mark.parametrize("per_token", [False, True], ids=["mod(B,D)", "mod(B,L,D)"])
AFFINE = pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])


@DTYPES
@PER_TOKEN
@AFFINE
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_layer_norm_scale_shift(shape, affine, per_token, dtype) -> None:
    torch.manual_seed(0)
    B, L, D = shape
    # Off-center rows, so that a missing mean subtraction shows.
    x = _strided_tokens(_randn(B, L, D, dtype=dtype) + 1.0)
    shift, scale = _modulation(B, L, D, per_token, dtype)
    weight, bias = (1 + 0.5 * _randn(D, dtype=dtype), 0.5 * _randn(D, dtype=dtype)) if affine else (None, None)

    actual = tk.layer_norm_scale_shift(x, shift, scale, EPS, weight=weight, bias=bias)

    expected = _modulate(F.layer_norm(x, (D,), weight, bias, EPS), shift, scale)
    x32, weight32, bias32, shift32, scale32 = (t if t is None else t.float() for t in (x, weight, bias, shift, scale))
    exact32 = _modulate(F.layer_norm(x32, (D,), weight32, bias32, EPS), shift32, scale32)
    _check(actual, expected, "layer_norm", exact32)


@DTYPES
@PER_TOKEN
@AFFINE
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_rms_norm_scale_shift(shape, affine, per_token, dtype) -> None:
    torch.manual_seed(1)
    B, L, D = shape
    x = _strided_tokens(_randn(B, L, D, dtype=dtype) + 1.0)
    shift, scale = _modulation(B, L, D, per_token, dtype)
    weight = 1 + 0.5 * _randn(D, dtype=dtype) if affine else None

    actual = tk.rms_norm_scale_shift(x, weight, shift, scale, EPS)

    # F.rms_norm is RMSNorm's forward (it computes in float32 and rounds once, before the modulation).
    expected = _modulate(F.rms_norm(x, (D,), weight, EPS), shift, scale)
    weight32 = None if weight is None else weight.float()
    exact32 = _modulate(F.rms_norm(x.float(), (D,), weight32, EPS), shift.float(), scale.float())
    _check(actual, expected, "rms_norm", exact32)


@DTYPES
@PER_TOKEN
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_gated_residual(shape, per_token, dtype) -> None:
    torch.manual_seed(2)
    B, L, D = shape
    residual = _strided_tokens(_randn(B, L, D, dtype=dtype))
    branch = _randn(B, D, L, dtype=dtype).transpose(1, 2)  # (B, L, D) whose last dimension is strided
    gate = _randn(*((B, L, D) if per_token else (B, D)), dtype=dtype)
    inputs = [t.clone() for t in (residual, gate, branch)]

    actual = tk.gated_residual(residual, gate, branch)

    tokens_gate = gate if per_token else gate[:, None]
    expected = residual + tokens_gate * branch
    exact32 = residual.float() + tokens_gate.float() * branch.float()
    _check(actual, expected, "gated_residual", exact32)
    # A new tensor: the inputs are left as they were.
    for before, after in zip(inputs, (residual, gate, branch), strict=True):
        assert torch.equal(before, after)


@DTYPES
@pytest.mark.parametrize("batched_rope", [False, True], ids=["rope(L,Dh)", "rope(B,L,Dh)"])
@pytest.mark.parametrize("shape", [(1, 1, 2, 64), (2, 7, 3, 100), (2, 19, 1, 34)], ids=str)
def test_qk_norm_rope(shape, batched_rope, dtype) -> None:
    torch.manual_seed(3)
    B, L, H, Dh = shape
    # Query and key as views of one fused projection, as attention computes them: strided heads and tokens.
    query, key = _randn(B, L, 2, H, Dh, dtype=dtype).unbind(2)  # (B, L, H, Dh) each
    q_weight, k_weight = 1 + 0.5 * _randn(Dh, dtype=dtype), 1 + 0.5 * _randn(Dh, dtype=dtype)
    # Positions far enough out that the angles wrap many times; per sample when batched, as for offset samples.
    positions = 7.0 * torch.arange(L, device=DEVICE) + 3  # (L,)
    if batched_rope:
        tables = [rope_frequencies(Dh, positions + 11 * b) for b in range(B)]
        cos, sin = (torch.stack(table) for table in zip(*tables, strict=True))  # (B, L, Dh) each
    else:
        cos, sin = rope_frequencies(Dh, positions)  # (L, Dh) each

    actual_q, actual_k = tk.qk_norm_rope(query, key, q_weight, k_weight, cos, sin, EPS)

    for actual, x, weight in ((actual_q, query, q_weight), (actual_k, key, k_weight)):
        expected = apply_rotary_emb(F.rms_norm(x, (Dh,), weight, EPS), cos, sin)
        # The kernel rounds after the norm as F.rms_norm does, twice in all: no one-rounding check against float32.
        # (The interpreter truncates that rounding where F.rms_norm rounds to nearest, so only a GPU shows the
        # bitwise parity it buys.)
        _check(actual, expected, "qk_norm_rope")


# Large negative inputs overflow exp in the interpreter's numpy sigmoid, to the right limit (0); GPUs don't warn.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@DTYPES
@pytest.mark.parametrize("shape, strided", [((33,), False), ((2, 7, 100), False), ((5, 3, 80), True)], ids=str)
def test_gelu_tanh(shape, strided, dtype) -> None:
    torch.manual_seed(4)
    x = 4 * _randn(*shape, dtype=dtype)  # out to |x| ~ 12, through both tails
    if strided:
        x = x[..., ::2]  # (5, 3, 40), every other element of memory

    actual = tk.gelu_tanh(x)

    _check(actual, F.gelu(x, approximate="tanh"), "gelu", F.gelu(x.float(), approximate="tanh"))


def test_without_triton_the_module_imports_and_the_kernels_say_how_to_install_it(monkeypatch) -> None:
    # A fresh copy of the module, importing with triton unavailable (None in sys.modules makes `import` fail).
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("triton_kernels_without_triton", tk.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert not module.available()
    x, row = _randn(1, 2, 4), _randn(1, 4)
    calls = [
        lambda: module.layer_norm_scale_shift(x, row, row, EPS),
        lambda: module.rms_norm_scale_shift(x, None, row, row, EPS),
        lambda: module.gated_residual(x, row, x),
        lambda: module.qk_norm_rope(x[..., None, :], x[..., None, :], row[0], row[0], x[0], x[0], EPS),
        lambda: module.gelu_tanh(x),
    ]
    for call in calls:
        with pytest.raises(EaselError, match="pip install triton"):
            call()
