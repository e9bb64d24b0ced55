"""Parity of Easel's Qwen-Image DiT with Diffusers' QwenImageTransformer2DModel on tiny random models (CPU, fp32)."""

import dataclasses
import math

import pytest
import torch
from diffusers import QwenImageTransformer2DModel as DiffusersQwenImage
from diffusers.models.embeddings import Timesteps

from easel.configs.models.dits.qwen_image import QwenImageDitConfig
from easel.runtime.layers import timestep_embedding
from easel.runtime.models.dits.qwen_image import QwenImageTransformer2DModel

TOLERANCE = 1e-5
BATCH, TEXT_LEN = 2, 7

TINY_CONFIG = dict(
    patch_size=2,
    in_channels=16,
    out_channels=4,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    axes_dims_rope=(4, 6, 6),
)
LAYERED = dict(use_layer3d_rope=True, use_additional_t_cond=True)
ZERO_COND_T = dict(zero_cond_t=True)

# img_shapes of one sample as the pipelines build them: (frames, rows, columns) of each packed grid.
T2I_SHAPES = [(1, 4, 6)]
EDIT_SHAPES = [(1, 4, 6), (1, 6, 5)]  # the output grid, then the reference image's (its own aspect ratio)
EDIT_PLUS_SHAPES = [(1, 4, 6), (1, 5, 5), (1, 3, 7)]  # several reference images
LAYERED_SHAPES = [(1, 4, 4)] * 3 + [(1, 4, 4)]  # the composite and 2 layers, then the input image (frame -1)

CASES = {
    "t2i": ({}, T2I_SHAPES),
    "edit": ({}, EDIT_SHAPES),
    "edit-plus": ({}, EDIT_PLUS_SHAPES),
    "layered": (LAYERED, LAYERED_SHAPES),
    "edit-zero-cond-t": (ZERO_COND_T, EDIT_PLUS_SHAPES),
}


def _models(**flags: bool) -> tuple[DiffusersQwenImage, QwenImageTransformer2DModel]:
    torch.manual_seed(0)
    reference = DiffusersQwenImage(**TINY_CONFIG, **flags).eval()
    # Diffusers zero-initializes some layers and sets norms to one; randomize every weight so none is trivial.
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.2)

    config = QwenImageDitConfig(**TINY_CONFIG, **flags)
    with torch.device("meta"):
        ours = QwenImageTransformer2DModel(config)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


def _inputs(img_shapes: list[tuple[int, int, int]], **flags: bool) -> dict[str, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1)
    length = sum(math.prod(shape) for shape in img_shapes)
    return dict(
        hidden_states=torch.randn(BATCH, length, TINY_CONFIG["in_channels"], generator=generator),
        encoder_hidden_states=torch.randn(BATCH, TEXT_LEN, TINY_CONFIG["joint_attention_dim"], generator=generator),
        timestep=torch.tensor([0.3, 0.85]),
        additional_t_cond=torch.tensor([0, 1]) if flags.get("use_additional_t_cond") else None,
    )


def _compare(flags: dict, img_shapes: list, mask: torch.Tensor | None = None) -> tuple[float, float]:
    """(max abs difference from Diffusers, max abs change when encoder_hidden_states change)."""
    reference, ours = _models(**flags)
    inputs = _inputs(img_shapes, **flags)
    with torch.no_grad():
        expected = reference(
            **inputs, encoder_hidden_states_mask=mask, img_shapes=[img_shapes] * BATCH, return_dict=False
        )[0]
        freqs_cis = ours.rotary_emb(img_shapes, TEXT_LEN)
        actual = ours(**inputs, freqs_cis=freqs_cis, encoder_hidden_states_mask=mask, img_shapes=img_shapes)
        # The parity check must be able to fail: a different prompt moves the output well past the tolerance.
        other_text = dict(inputs, encoder_hidden_states=torch.randn_like(inputs["encoder_hidden_states"]))
        changed = ours(**other_text, freqs_cis=freqs_cis, encoder_hidden_states_mask=mask, img_shapes=img_shapes)
    assert actual.shape == expected.shape == inputs["hidden_states"].shape[:2] + (4 * TINY_CONFIG["out_channels"],)
    error = (actual - expected).abs().max().item()
    print(f"Qwen-Image DiT {flags} {img_shapes}: max abs diff {error:.2e}")
    return error, (changed - actual).abs().max().item()


def test_state_dict_keys_match_diffusers() -> None:
    for flags, _ in CASES.values():
        reference, ours = _models(**flags)
        assert list(ours.state_dict()) == list(reference.state_dict())
        assert not list(ours.buffers())


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_diffusers(case: str) -> None:
    flags, img_shapes = CASES[case]
    error, moved = _compare(flags, img_shapes)
    assert error <= TOLERANCE
    assert moved > 10 * TOLERANCE


def test_text_padding_mask_matches_diffusers() -> None:
    # Sample 0 has 4 real tokens and 3 padding ones, sample 1 none: Diffusers hides the padding from every query.
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * TEXT_LEN])
    error, moved = _compare({}, EDIT_SHAPES, mask)
    assert error <= TOLERANCE
    assert moved > 10 * TOLERANCE


def test_rotary_embedding_matches_diffusers_pos_embed() -> None:
    for flags, img_shapes in CASES.values():
        reference, ours = _models(**flags)
        video_freqs, text_freqs = reference.pos_embed([img_shapes], max_txt_seq_len=TEXT_LEN, device="cpu")
        expected = torch.cat([text_freqs, video_freqs])  # complex (T + L, head_dim / 2), text first as ours
        cos, sin = ours.rotary_emb(img_shapes, TEXT_LEN)
        assert cos.dtype == torch.float32 and cos.shape == (len(expected), TINY_CONFIG["attention_head_dim"])
        torch.testing.assert_close(cos[:, ::2], expected.real, rtol=0, atol=0)
        torch.testing.assert_close(sin[:, ::2], expected.imag, rtol=0, atol=0)
        torch.testing.assert_close(cos[:, 1::2], cos[:, ::2], rtol=0, atol=0)


def test_scaled_timestep_embedding_matches_diffusers_timesteps() -> None:
    # Qwen-Image scales sigma by 1000 inside its sinusoid, after the product with the frequencies.
    t = torch.tensor([0.0, 0.3, 0.85, 1.0])
    expected = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000)(t)
    torch.testing.assert_close(timestep_embedding(t, 256, scale=1000.0), expected, rtol=0, atol=0)


def test_matches_diffusers_in_bfloat16() -> None:
    # Same op order and casts as Diffusers, so bf16 agrees too (bitwise on CPU today); the tolerance is about one
    # bf16 ulp at the output's magnitude, loose enough for kernel changes, tight for a wrong cast.
    reference, ours = (model.to(torch.bfloat16) for model in _models())
    inputs = _inputs(EDIT_SHAPES)
    for name in ("hidden_states", "encoder_hidden_states"):
        inputs[name] = inputs[name].to(torch.bfloat16)
    with torch.no_grad():
        expected = reference(**inputs, img_shapes=[EDIT_SHAPES] * BATCH, return_dict=False)[0]
        actual = ours(**inputs, freqs_cis=ours.rotary_emb(EDIT_SHAPES, TEXT_LEN))
    assert actual.dtype == torch.bfloat16
    assert (actual.float() - expected.float()).abs().max().item() <= 3e-2


def test_missing_conditioning_inputs_are_refused() -> None:
    _, ours = _models(**LAYERED)
    inputs = dict(_inputs(LAYERED_SHAPES, **LAYERED), additional_t_cond=None)
    freqs_cis = ours.rotary_emb(LAYERED_SHAPES, TEXT_LEN)
    with pytest.raises(ValueError, match="additional_t_cond"):
        ours(**inputs, freqs_cis=freqs_cis)
    with pytest.raises(ValueError, match="guidance"):
        ours(**_inputs(LAYERED_SHAPES, **LAYERED), freqs_cis=freqs_cis, guidance=torch.ones(BATCH))
    _, ours = _models(**ZERO_COND_T)
    with pytest.raises(ValueError, match="img_shapes"):
        ours(**_inputs(EDIT_SHAPES), freqs_cis=ours.rotary_emb(EDIT_SHAPES, TEXT_LEN))


def test_config_default_is_qwen_image_shaped() -> None:
    # The default config must build the full-size architecture's key set (checked on meta, no memory).
    with torch.device("meta"):
        ours = QwenImageTransformer2DModel(dataclasses.replace(QwenImageDitConfig()))
    assert len(ours.transformer_blocks) == 60
    assert ours.img_in.weight.shape == (3072, 64) and ours.proj_out.weight.shape == (64, 3072)
    assert ours.txt_in.weight.shape == (3072, 3584)
