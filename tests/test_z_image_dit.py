"""Parity of Easel's Z-Image DiT with Diffusers' ZImageTransformer2DModel on a tiny random model (CPU, fp32)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers import ZImageTransformer2DModel as DiffusersZImage
from diffusers.models.transformers.transformer_z_image import RopeEmbedder

from easel.configs.models.dits.z_image import ZImageDitConfig
from easel.runtime.layers import apply_rotary_emb, attention, polar_rope_frequencies
from easel.runtime.models.dits.z_image import ZImageTransformer2DModel

TOLERANCE = 1e-5
CHANNELS, CAPTION_DIM = 4, 24
# Latents of 10x14 are 5x7 = 35 image tokens, padded to 64; 7 and 40 caption tokens pad to 32 and 64, so the batch
# needs its key-padding masks. 7 and 20 both pad to 32: the unmasked path.
LATENT_SIZE = (1, 10, 14)
CAPTION_LENGTHS = {"masked": (7, 40), "unmasked": (7, 20)}

TINY_CONFIG = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=CHANNELS,
    dim=32,
    n_layers=2,
    n_refiner_layers=1,
    n_heads=2,
    n_kv_heads=2,
    cap_feat_dim=CAPTION_DIM,
    axes_dims=(4, 6, 6),
    axes_lens=(1536, 512, 512),
)


def _models(**overrides) -> tuple[DiffusersZImage, ZImageTransformer2DModel]:
    config = {**TINY_CONFIG, **overrides}
    torch.manual_seed(0)
    reference = DiffusersZImage(**config).eval()
    # Diffusers zero-initializes some weights and leaves the pad tokens uninitialized; randomize every weight so
    # none is trivially zero (0.1 keeps the output of order one, where 1e-5 is a few float32 ulps).
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.1)

    with torch.device("meta"):
        ours = ZImageTransformer2DModel(ZImageDitConfig(**config))
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


def _inputs(caption_lengths: tuple[int, ...], dtype: torch.dtype = torch.float32) -> dict:
    generator = torch.Generator().manual_seed(1)
    return dict(
        x=torch.randn(len(caption_lengths), CHANNELS, *LATENT_SIZE, generator=generator).to(dtype),
        t=torch.tensor([0.3, 0.85]),
        cap_feats=[torch.randn(n, CAPTION_DIM, generator=generator).to(dtype) for n in caption_lengths],
    )


def _reference_output(reference: DiffusersZImage, x: torch.Tensor, t: torch.Tensor, cap_feats) -> torch.Tensor:
    """Diffusers takes and returns lists of per-sample (C, F, H, W) latents; stacked here."""
    return torch.stack(reference(list(x), t, list(cap_feats), return_dict=False)[0])


def test_state_dict_keys_match_diffusers() -> None:
    reference, ours = _models()
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert not list(ours.buffers())
    # Omni checkpoints carry a SigLIP branch; it must load too (unused by text-to-image).
    reference, ours = _models(siglip_feat_dim=8)
    assert list(ours.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("captions", list(CAPTION_LENGTHS), ids=list(CAPTION_LENGTHS))
def test_matches_diffusers(captions: str) -> None:
    reference, ours = _models()
    inputs = _inputs(CAPTION_LENGTHS[captions])

    with torch.no_grad():
        expected = _reference_output(reference, **inputs)
        actual = ours(**inputs)

        # The parity check must be able to fail: other caption features move the output well past the tolerance.
        other_captions = [torch.randn_like(feats) for feats in inputs["cap_feats"]]
        changed = ours(**dict(inputs, cap_feats=other_captions))

    assert actual.shape == (2, CHANNELS, *LATENT_SIZE)
    error = (actual - expected).abs().max().item()
    print(f"Z-Image DiT: max abs diff {error:.2e}")
    assert error <= TOLERANCE
    assert (changed - actual).abs().max().item() > 10 * TOLERANCE


def test_layout_built_once_and_list_inputs_give_the_same_output() -> None:
    _, ours = _models()
    inputs = _inputs(CAPTION_LENGTHS["masked"])
    layout = ours.rotary_emb(CAPTION_LENGTHS["masked"], LATENT_SIZE)
    assert layout.caption_mask is not None and layout.unified_mask is not None
    assert ours.rotary_emb(CAPTION_LENGTHS["unmasked"], LATENT_SIZE).unified_mask is None

    with torch.no_grad():
        expected = ours(**inputs)
        with_layout = ours(**inputs, layout=layout)
        from_list = ours(list(inputs["x"]), inputs["t"], inputs["cap_feats"])
    torch.testing.assert_close(with_layout, expected, rtol=0, atol=0)
    torch.testing.assert_close(from_list, expected, rtol=0, atol=0)

    with pytest.raises(ValueError, match="caption lengths"):
        ours(**dict(inputs, cap_feats=inputs["cap_feats"][::-1]), layout=layout)


def test_matches_diffusers_in_bfloat16() -> None:
    # Same op order, casts and norm roundings as Diffusers, so bf16 agrees too (bitwise on CPU today); the tolerance
    # is about one bf16 ulp at the output's magnitude, loose enough for kernel changes, tight for a wrong cast.
    reference, ours = (model.to(torch.bfloat16) for model in _models())
    inputs = _inputs(CAPTION_LENGTHS["masked"], torch.bfloat16)
    with torch.no_grad():
        expected = _reference_output(reference, **inputs)
        actual = ours(**inputs)
    assert actual.dtype == torch.bfloat16
    assert (actual.float() - expected.float()).abs().max().item() <= 2e-2


def test_rotary_tables_match_diffusers_rope_embedder() -> None:
    # Positions up to the real tables' 1536, where rounding the angles to float32 first matters (up to 6e-5 in cos).
    axes_dims, axes_lens = (32, 48, 48), (1536, 512, 512)
    generator = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, length, (300,), generator=generator) for length in axes_lens], dim=-1)
    expected = RopeEmbedder(theta=256.0, axes_dims=list(axes_dims), axes_lens=list(axes_lens))(ids)  # complex
    cos, sin = polar_rope_frequencies(ids, axes_dims, theta=256.0)
    torch.testing.assert_close(cos[:, ::2], expected.real, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin[:, ::2], expected.imag, rtol=0, atol=1e-6)
    # Leading dimensions are kept: per-sample ids (B, L, 3) give per-sample tables (B, L, D).
    batched_cos, _ = polar_rope_frequencies(ids.view(3, 100, 3), axes_dims, theta=256.0)
    torch.testing.assert_close(batched_cos, cos.view(3, 100, -1), rtol=0, atol=0)


def test_per_sample_rotary_and_masked_attention() -> None:
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 6, 2, 8, generator=generator) for _ in range(3))
    cos, sin = (torch.randn(2, 6, 8, generator=generator) for _ in range(2))
    per_sample = apply_rotary_emb(query, cos, sin)
    for index in range(2):
        one = apply_rotary_emb(query[index : index + 1], cos[index], sin[index])
        torch.testing.assert_close(per_sample[index : index + 1], one, rtol=0, atol=0)

    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    expected = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask[:, None, None, :]
    ).transpose(1, 2)
    torch.testing.assert_close(attention(query, key, value, mask), expected)
    # The masked sample sees only its first 4 keys: the same as attending over those alone.
    alone = attention(query[1:], key[1:, :4], value[1:, :4])
    torch.testing.assert_close(attention(query, key, value, mask)[1:], alone)


def test_config_default_is_z_image_shaped() -> None:
    # The default config must build the full-size architecture's key set (checked on meta, no memory).
    with torch.device("meta"):
        ours = ZImageTransformer2DModel(ZImageDitConfig())
    assert len(ours.layers) == 30 and len(ours.noise_refiner) == len(ours.context_refiner) == 2
    assert ours.layers[0].feed_forward.w1.out_features == 10240
    # config.json holds lists and Diffusers' bookkeeping keys.
    config = ZImageDitConfig.from_dict({"_class_name": "ZImageTransformer2DModel", "axes_lens": [1536, 512, 512]})
    assert config == dataclasses.replace(ZImageDitConfig(), axes_lens=(1536, 512, 512))
