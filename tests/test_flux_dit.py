"""Parity of Easel's FLUX.1 DiT with Diffusers' FluxTransformer2DModel on a tiny random model (CPU, fp32)."""

import dataclasses

import pytest
import torch
from diffusers import FluxTransformer2DModel as DiffusersFlux

from easel.configs.models.dits.flux import FluxDitConfig
from easel.runtime.models.dits.flux import FluxTransformer2DModel

TOLERANCE = 1e-5
BATCH, TEXT_LEN, GRID_H, GRID_W = 2, 7, 4, 6

TINY_CONFIG = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
)


def _image_ids(height: int, width: int) -> torch.Tensor:
    """Position ids (H * W, 3) = (0, row, col), built like FluxPipeline._prepare_latent_image_ids."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3)


def _models(guidance_embeds: bool) -> tuple[DiffusersFlux, FluxTransformer2DModel]:
    torch.manual_seed(0)
    reference = DiffusersFlux(**TINY_CONFIG, guidance_embeds=guidance_embeds).eval()
    # Diffusers zero-initializes some layers (e.g. adaLN); randomize every weight so none is trivially zero.
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.2)

    config = FluxDitConfig(**TINY_CONFIG, guidance_embeds=guidance_embeds)
    with torch.device("meta"):
        ours = FluxTransformer2DModel(config)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


def _inputs(guidance_embeds: bool) -> dict[str, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1)
    cfg = TINY_CONFIG
    return dict(
        hidden_states=torch.randn(BATCH, GRID_H * GRID_W, cfg["in_channels"], generator=generator),
        encoder_hidden_states=torch.randn(BATCH, TEXT_LEN, cfg["joint_attention_dim"], generator=generator),
        pooled_projections=torch.randn(BATCH, cfg["pooled_projection_dim"], generator=generator),
        timestep=torch.tensor([0.3, 0.85]),
        guidance=torch.tensor([3.5, 1.5]) if guidance_embeds else None,
    )


def test_state_dict_keys_match_diffusers() -> None:
    for guidance_embeds in (False, True):
        reference, ours = _models(guidance_embeds)
        assert list(ours.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("guidance_embeds", [False, True], ids=["schnell-like", "guidance-distilled"])
def test_matches_diffusers(guidance_embeds: bool) -> None:
    reference, ours = _models(guidance_embeds)
    inputs = _inputs(guidance_embeds)
    txt_ids, img_ids = torch.zeros(TEXT_LEN, 3), _image_ids(GRID_H, GRID_W)

    with torch.no_grad():
        expected = reference(**inputs, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        freqs_cis = ours.rotary_emb(torch.cat([txt_ids, img_ids]))
        actual = ours(**inputs, freqs_cis=freqs_cis)

        # The parity check must be able to fail: a different prompt moves the output well past the tolerance.
        other_text = dict(inputs, encoder_hidden_states=torch.randn_like(inputs["encoder_hidden_states"]))
        changed = ours(**other_text, freqs_cis=freqs_cis)

    assert actual.shape == (BATCH, GRID_H * GRID_W, TINY_CONFIG["in_channels"])
    error = (actual - expected).abs().max().item()
    print(f"FLUX DiT: max abs diff {error:.2e}")
    assert error <= TOLERANCE
    assert (changed - actual).abs().max().item() > 10 * TOLERANCE


def test_matches_diffusers_in_bfloat16() -> None:
    # Same op order and dtype casts as Diffusers, so bf16 agrees too (bitwise on CPU today); the tolerance is
    # about one bf16 ulp at the output's magnitude, loose enough for kernel changes, tight for a wrong cast.
    reference, ours = (model.to(torch.bfloat16) for model in _models(guidance_embeds=True))
    inputs = _inputs(guidance_embeds=True)
    for name in ("hidden_states", "encoder_hidden_states", "pooled_projections"):
        inputs[name] = inputs[name].to(torch.bfloat16)
    txt_ids, img_ids = torch.zeros(TEXT_LEN, 3), _image_ids(GRID_H, GRID_W)

    with torch.no_grad():
        expected = reference(**inputs, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        actual = ours(**inputs, freqs_cis=ours.rotary_emb(torch.cat([txt_ids, img_ids])))

    assert actual.dtype == torch.bfloat16
    assert (actual.float() - expected.float()).abs().max().item() <= 3e-2


def test_rotary_embedding_matches_diffusers_pos_embed() -> None:
    _, ours = _models(guidance_embeds=False)
    reference = DiffusersFlux(**TINY_CONFIG).pos_embed
    ids = torch.cat([torch.zeros(TEXT_LEN, 3), _image_ids(GRID_H, GRID_W)])
    for actual, expected in zip(ours.rotary_emb(ids), reference(ids), strict=True):
        assert actual.dtype == torch.float32
        assert actual.shape == (TEXT_LEN + GRID_H * GRID_W, TINY_CONFIG["attention_head_dim"])
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_guidance_distilled_model_requires_guidance() -> None:
    _, ours = _models(guidance_embeds=True)
    inputs = dict(_inputs(guidance_embeds=True), guidance=None)
    freqs_cis = ours.rotary_emb(torch.cat([torch.zeros(TEXT_LEN, 3), _image_ids(GRID_H, GRID_W)]))
    with pytest.raises(ValueError, match="guidance"):
        ours(**inputs, freqs_cis=freqs_cis)


def test_config_default_is_flux_dev_shaped() -> None:
    # The default config must build the full-size architecture's key set (checked on meta, no memory).
    with torch.device("meta"):
        ours = FluxTransformer2DModel(dataclasses.replace(FluxDitConfig(), guidance_embeds=True))
    assert len(ours.transformer_blocks) == 19 and len(ours.single_transformer_blocks) == 38
