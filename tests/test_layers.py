"""Unit tests of the layer library against Diffusers' and PyTorch's reference implementations."""

import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import Timesteps, get_1d_rotary_pos_embed
from diffusers.models.embeddings import apply_rotary_emb as diffusers_apply_rotary_emb

from easel.errors import EaselError
from easel.runtime.layers import (
    LayerNormScaleShift,
    RMSNorm,
    RMSNormScaleShift,
    active_attention_backend,
    apply_rotary_emb,
    attention,
    attention_is_lossy,
    available_attention_backends,
    exact_attention,
    multi_axis_rope_frequencies,
    resolve_attention_backend,
    rope_frequencies,
    set_attention_backend,
    timestep_embedding,
)


def test_rope_frequencies_match_diffusers() -> None:
    positions = torch.arange(0, 50, dtype=torch.float32) * 3.0
    actual = rope_frequencies(16, positions, theta=10000.0)
    expected = get_1d_rotary_pos_embed(
        16, positions, theta=10000.0, use_real=True, repeat_interleave_real=True, freqs_dtype=torch.float64
    )
    for ours, theirs in zip(actual, expected, strict=True):
        assert ours.dtype == torch.float32 and ours.shape == (50, 16)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_multi_axis_rope_concatenates_axes() -> None:
    ids = torch.stack([torch.zeros(10), torch.arange(10.0), torch.arange(10.0).flip(0)], dim=1)  # (L, 3)
    cos, sin = multi_axis_rope_frequencies(ids, (4, 6, 6))
    cos_row, sin_row = rope_frequencies(6, ids[:, 1])
    assert cos.shape == sin.shape == (10, 16)
    torch.testing.assert_close(cos[:, 4:10], cos_row)
    torch.testing.assert_close(sin[:, 4:10], sin_row)
    torch.testing.assert_close(cos[:, :4], torch.ones(10, 4))  # axis 0 is all zeros: no rotation


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_emb_matches_diffusers(dtype: torch.dtype) -> None:
    x = torch.randn(2, 12, 3, 16, generator=torch.Generator().manual_seed(0)).to(dtype)  # (B, L, H, D)
    cos, sin = rope_frequencies(16, torch.arange(12.0))
    actual = apply_rotary_emb(x, cos, sin)
    expected = diffusers_apply_rotary_emb(x, (cos, sin), use_real_unbind_dim=-1, sequence_dim=1)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_layer_norm_scale_shift_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    x, shift, scale = torch.randn(2, 5, 8, generator=generator), *torch.randn(2, 2, 8, generator=generator)
    mean = x.mean(-1, keepdim=True)
    variance = x.var(-1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(variance + 1e-6) * (1 + scale[:, None]) + shift[:, None]
    norm = LayerNormScaleShift(8)
    torch.testing.assert_close(norm(x, shift, scale), expected, rtol=1e-5, atol=1e-5)
    assert dict(norm.state_dict()) == {}


def test_rms_norms_match_torch() -> None:
    generator = torch.Generator().manual_seed(0)
    x, shift, scale = torch.randn(2, 5, 8, generator=generator), *torch.randn(2, 2, 8, generator=generator)
    weight = torch.randn(8, generator=generator)
    reference = torch.nn.RMSNorm(8, eps=1e-6)
    ours, ours_modulated = RMSNorm(8, eps=1e-6), RMSNormScaleShift(8, eps=1e-6)
    for module in (reference, ours, ours_modulated):
        module.load_state_dict({"weight": weight})
    expected = reference(x)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        ours_modulated(x, shift, scale), expected * (1 + scale[:, None]) + shift[:, None], rtol=0, atol=1e-6
    )


def test_timestep_embedding_matches_diffusers() -> None:
    t = torch.tensor([0.0, 1.0, 250.5, 999.0])
    expected = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    torch.testing.assert_close(timestep_embedding(t, 256), expected, rtol=0, atol=0)


def test_attention_dispatcher_matches_sdpa() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 9, 4, 8, generator=generator)  # each (B, L, H, D)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    set_attention_backend("torch_sdpa")
    torch.testing.assert_close(attention(q, k, v), expected.transpose(1, 2))


def test_unknown_attention_backend_lists_available_names() -> None:
    assert {"torch_sdpa", "flash_attn", "sage_attn"} <= set(available_attention_backends())
    with pytest.raises(EaselError, match="auto, flash_attn, sage_attn, torch_sdpa"):
        set_attention_backend("no_such_kernel")


def test_auto_attention_backend_is_exact_and_runs_here() -> None:
    assert resolve_attention_backend("auto") == "torch_sdpa"  # no CUDA and no flash-attn on this machine
    set_attention_backend("auto")
    assert active_attention_backend() == "torch_sdpa"


@pytest.mark.parametrize(("name", "pip_name"), [("flash_attn", "flash-attn"), ("sage_attn", "sageattention")])
def test_missing_attention_package_is_a_clear_error(monkeypatch, name: str, pip_name: str) -> None:
    with pytest.raises(EaselError, match="needs a CUDA GPU"):
        set_attention_backend(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EaselError, match=f"pip install {pip_name}"):
        set_attention_backend(name)


def test_lossy_attention_backend_is_turned_off_by_exact_attention(monkeypatch) -> None:
    # A stand-in SageAttention: the dispatcher's part (layout, selection, the exact path) is what is tested here.
    calls = []

    def sageattn(query, key, value, tensor_layout, is_causal):
        calls.append(tensor_layout)
        return query.clone()

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    q, k, v = torch.randn(3, 1, 5, 2, 8, generator=torch.Generator().manual_seed(0))
    exact = attention(q, k, v)
    try:
        set_attention_backend("sage_attn")
        assert attention_is_lossy()
        assert torch.equal(attention(q, k, v), q) and calls == ["NHD"]
        with exact_attention():
            assert torch.equal(attention(q, k, v), exact)
        assert active_attention_backend() == "sage_attn"
    finally:
        set_attention_backend("torch_sdpa")
