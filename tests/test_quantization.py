"""DiT weight quantization on the CPU: int8 weight-only end to end (layers, a tiny FLUX DiT, a tiny pipeline), and
fp8's refusal off a Hopper/Ada GPU plus its scaling math, checked through torch's CPU `_scaled_mm` and an fp32
emulation. The CUDA kernels themselves need a GPU and are not run here."""

import copy

import pytest
import torch
from torch import nn

from easel import DiffGenerator
from easel.errors import InvalidInputError
from easel.quality import psnr
from easel.runtime.layers.lora import LoRALinear
from easel.runtime.layers.quantization import (
    Fp8Linear,
    Int8WeightOnlyLinear,
    fp8_reference_linear,
    quantize_dit,
)
from tests import test_flux_dit

# The tiny FLUX DiT's block linears: 14 per double-stream block (2 adaLN, 8 attention, 4 MLP), 6 per single-stream
# block (adaLN, q/k/v, MLP in, the shared output).
TINY_FLUX_BLOCK_LINEARS = 2 * 14 + 2 * 6


def _flux():
    _, dit = test_flux_dit._models(guidance_embeds=True)
    inputs = test_flux_dit._inputs(guidance_embeds=True)
    ids = torch.cat([torch.zeros(test_flux_dit.TEXT_LEN, 3), test_flux_dit._image_ids(4, 6)])
    return dit, dict(inputs, freqs_cis=dit.rotary_emb(ids))


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def _block_bytes(dit: nn.Module) -> int:
    tensors = [t for block in dit.repeated_blocks() for t in [*block.parameters(), *block.buffers()]]
    return sum(t.numel() * t.element_size() for t in tensors)


def _linear_with_uneven_rows(in_features: int = 64, out_features: int = 48) -> nn.Linear:
    """Output channels whose magnitudes span 4 decades: a per-tensor scale would flatten the small ones to 0."""
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        magnitudes = torch.logspace(-4, 0, out_features)
        linear.weight.mul_(magnitudes[:, None])
        linear.bias.mul_(magnitudes)
    return linear


def _per_channel_error(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Relative error of each output channel (the last dim) over all tokens."""
    return (actual - expected).flatten(0, -2).norm(dim=0) / expected.flatten(0, -2).norm(dim=0)


# --- int8 weight-only --------------------------------------------------------------------------------------------
def test_int8_weights_round_to_the_nearest_step_of_their_channel():
    linear = _linear_with_uneven_rows()
    layer = Int8WeightOnlyLinear(linear)
    weight = linear.weight.detach()
    assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == weight.shape
    assert layer.weight_scale.shape == (48,) and layer.weight_scale.dtype == torch.float32
    # Round to nearest: within half a step of the weight; the largest weight of a row lands on +-127 steps.
    error = (layer.dequantized_weight() - weight).abs()
    assert (error <= layer.weight_scale[:, None] / 2 * (1 + 1e-6)).all()
    assert (layer.qweight.abs().amax(dim=1) == 127).all()

    x = torch.randn(256, 64)
    with torch.no_grad():
        per_channel = _per_channel_error(layer(x), linear(x))
    print(f"int8wo linear: per-channel relative error at most {per_channel.max():.3%}")
    assert per_channel.max() < 0.02


def test_int8wo_flux_dit_is_close_to_fp32_in_a_quarter_of_the_memory():
    dit, inputs = _flux()
    with torch.no_grad():
        expected = dit(**inputs)
    before = _block_bytes(dit)

    assert quantize_dit(dit, "int8wo") == TINY_FLUX_BLOCK_LINEARS
    blocks = dit.repeated_blocks()
    assert not any(isinstance(m, nn.Linear) for block in blocks for m in block.modules())
    # The embedders and the final layer keep their full-precision weights.
    assert isinstance(dit.x_embedder, nn.Linear) and isinstance(dit.proj_out, nn.Linear)
    assert dit.transformer_blocks[0].attn.to_q.qweight.dtype == torch.int8
    # int8 weights are a quarter of fp32; biases, norms and scales stay fp32, a larger share at this tiny width.
    print(f"int8wo: block memory {before} -> {_block_bytes(dit)} bytes ({before / _block_bytes(dit):.2f}x)")
    assert before / _block_bytes(dit) > 3

    with torch.no_grad():
        actual = dit(**inputs)
    error = _relative_error(actual, expected)
    print(f"int8wo tiny FLUX DiT: relative error {error:.3%}")
    # Lossy, but not by much: a wrong scale (5% off, or transposed) moves it past 2%; per-tensor scales are caught
    # by the uneven rows of the layer test above.
    assert 0 < error < 0.02


def test_a_quantized_dit_saves_and_loads_its_own_state_dict():
    dit, inputs = _flux()
    fresh = copy.deepcopy(dit)
    quantize_dit(dit, "int8wo")
    state = dit.state_dict()
    # New names for the quantized weights: a full-precision checkpoint cannot be cast into them silently.
    assert "transformer_blocks.0.attn.to_q.qweight" in state and "transformer_blocks.0.attn.to_q.weight" not in state
    with pytest.raises(RuntimeError, match="Missing key"):
        dit.load_state_dict(fresh.state_dict())

    quantize_dit(fresh, "int8wo")
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs), dit(**inputs))


def test_int8wo_keeps_a_bfloat16_dit_in_bfloat16():
    dit, inputs = _flux()
    dit = dit.to(torch.bfloat16)
    inputs = {
        k: v.to(torch.bfloat16) if k in ("hidden_states", "encoder_hidden_states", "pooled_projections") else v
        for k, v in inputs.items()
    }
    with torch.no_grad():
        expected = dit(**inputs)
        quantize_dit(dit, "int8wo")
        actual = dit(**inputs)
    assert dit.transformer_blocks[0].attn.to_q.weight_scale.dtype == torch.bfloat16
    assert actual.dtype == torch.bfloat16 and 0 < _relative_error(actual, expected) < 0.03


def test_a_quantized_pipeline_generates_close_to_the_exact_one(tiny_pipeline):
    generator = DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False)
    params = dict(height=32, width=48, num_inference_steps=2, seed=0, output_type="np")
    exact = generator.generate("a red circle", **params).images
    assert quantize_dit(generator.pipeline.modules["transformer"], "int8wo") == TINY_FLUX_BLOCK_LINEARS
    quantized = generator.generate("a red circle", **params).images
    quality = psnr(quantized, exact)
    print(f"int8wo tiny FLUX pipeline: PSNR {quality:.1f} dB vs exact")
    assert 30 < quality < float("inf")


def test_lora_and_unknown_methods_are_refused():
    dit, _ = _flux()
    with pytest.raises(InvalidInputError, match="choose one of"):
        quantize_dit(dit, "int4")
    lora = LoRALinear(dit.transformer_blocks[1].attn.to_v)
    with pytest.raises(InvalidInputError, match="LoRA.*transformer_blocks.1.attn.to_v"):
        quantize_dit(dit, "int8wo")
    lora.detach()
    assert quantize_dit(dit, "int8wo") == TINY_FLUX_BLOCK_LINEARS


# --- fp8 ---------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_fp8_off_a_hopper_or_ada_gpu_is_refused_and_suggests_int8wo():
    dit, _ = _flux()
    with pytest.raises(InvalidInputError, match=r"Hopper or Ada GPU.*on the cpu device; use int8wo"):
        quantize_dit(dit, "fp8")
    assert isinstance(dit.transformer_blocks[0].attn.to_q, nn.Linear)  # refused before changing anything


def test_fp8_scaling_math():
    linear = _linear_with_uneven_rows()
    layer = Fp8Linear(linear)
    weight = linear.weight.detach()
    assert layer.qweight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (1, 48)
    # Each row's largest weight lands on e4m3's largest value, 448, so the dequantized rows keep their maxima;
    # e4m3's 3 mantissa bits round the rest within 1/16 of their size (a little more deep in the subnormals).
    dequantized = layer.qweight.float() * layer.weight_scale.t()
    torch.testing.assert_close(dequantized.abs().amax(dim=1), weight.abs().amax(dim=1), rtol=1e-6, atol=0)
    assert ((dequantized - weight).abs() <= weight.abs() / 16 + 1e-3 * layer.weight_scale.t()).all()

    tokens = torch.randn(256, 64)
    uneven_tokens = torch.randn(16, 64) * torch.logspace(-3, 1, 16)[:, None]
    with torch.no_grad():
        per_channel = _per_channel_error(fp8_reference_linear(tokens, layer), linear(tokens))
        emulated, exact = fp8_reference_linear(uneven_tokens, layer), linear(uneven_tokens)
        scaled_mm = layer(uneven_tokens)  # torch's CPU _scaled_mm: the same call as on the GPU, another kernel
    print(f"fp8 emulated linear: per-channel relative error at most {per_channel.max():.3%}")
    assert 0 < per_channel.max() < 0.08
    # Per-token activation scales: tokens 10^4 apart in size are each about as accurate.
    per_token = (emulated - exact).norm(dim=-1) / exact.norm(dim=-1)
    assert per_token.max() < 0.08
    # The real path agrees with the emulation up to its bf16 output.
    assert scaled_mm.dtype == torch.float32 and _relative_error(scaled_mm, emulated) < 0.01
