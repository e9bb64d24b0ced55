"""Parity of Easel's FLUX.2 DiT with Diffusers' Flux2Transformer2DModel on a tiny random model (CPU, fp32)."""

import dataclasses

import pytest
import torch
from diffusers import Flux2Transformer2DModel as DiffusersFlux2

from easel.configs.models.dits.flux2 import Flux2DitConfig
from easel.runtime.models.dits.flux2 import Flux2Transformer2DModel

TOLERANCE = 1e-5
BATCH, TEXT_LEN, GRID_H, GRID_W, REFERENCE_TOKENS = 2, 7, 4, 6, 6

TINY_CONFIG = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    timestep_guidance_channels=32,
    axes_dims_rope=(4, 4, 4, 4),
)


def _ids(text_len: int, height: int, width: int, reference_tokens: int) -> torch.Tensor:
    """Position ids (T + L, 4): text (0, 0, 0, index), the image (0, row, col, 0), then reference-image tokens at
    time 10 (as Flux2Pipeline places its first reference image)."""
    text = torch.zeros(text_len, 4)
    text[:, 3] = torch.arange(text_len)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([torch.zeros(height * width), rows.flatten(), cols.flatten(), torch.zeros(height * width)], 1)
    reference = torch.stack(
        [torch.full((reference_tokens,), 10.0), torch.zeros(reference_tokens), torch.arange(reference_tokens),
         torch.zeros(reference_tokens)], 1
    )  # fmt: skip
    return torch.cat([text, image, reference])


def _models(guidance_embeds: bool) -> tuple[DiffusersFlux2, Flux2Transformer2DModel]:
    torch.manual_seed(0)
    reference = DiffusersFlux2(**TINY_CONFIG, guidance_embeds=guidance_embeds).eval()
    with torch.no_grad():  # every weight random, none left at a trivial init
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    config = Flux2DitConfig(**TINY_CONFIG, guidance_embeds=guidance_embeds)
    with torch.device("meta"):
        ours = Flux2Transformer2DModel(config)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


def _inputs(guidance_embeds: bool) -> dict[str, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1)
    tokens = GRID_H * GRID_W + REFERENCE_TOKENS
    return dict(
        hidden_states=torch.randn(BATCH, tokens, TINY_CONFIG["in_channels"], generator=generator),
        encoder_hidden_states=torch.randn(BATCH, TEXT_LEN, TINY_CONFIG["joint_attention_dim"], generator=generator),
        timestep=torch.tensor([0.3, 0.85]),
        guidance=torch.tensor([4.0, 2.5]) if guidance_embeds else None,
    )


def _run_both(reference, ours, inputs):
    ids = _ids(TEXT_LEN, GRID_H, GRID_W, REFERENCE_TOKENS)
    txt_ids, img_ids = ids[:TEXT_LEN], ids[TEXT_LEN:]
    with torch.no_grad():
        expected = reference(**inputs, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        actual = ours(**inputs, freqs_cis=ours.rotary_emb(ids))
    return actual, expected


@pytest.mark.parametrize("guidance_embeds", [False, True], ids=["klein-like", "guidance-distilled"])
def test_matches_diffusers(guidance_embeds: bool) -> None:
    reference, ours = _models(guidance_embeds)
    inputs = _inputs(guidance_embeds)
    actual, expected = _run_both(reference, ours, inputs)
    assert actual.shape == expected.shape == (BATCH, GRID_H * GRID_W + REFERENCE_TOKENS, TINY_CONFIG["in_channels"])
    error = (actual - expected).abs().max().item()
    print(f"FLUX.2 DiT: max abs diff {error:.2e}")
    assert error <= TOLERANCE
    # The check must be able to fail: another prompt, or another reference image, moves the image's output.
    for name, sl in (("encoder_hidden_states", slice(None)), ("hidden_states", slice(GRID_H * GRID_W, None))):
        changed_input = inputs[name].clone()
        changed_input[:, sl] = torch.randn_like(changed_input[:, sl])
        changed, _ = _run_both(reference, ours, dict(inputs, **{name: changed_input}))
        assert (changed - actual)[:, : GRID_H * GRID_W].abs().max().item() > 10 * TOLERANCE, name


def test_state_dict_keys_match_diffusers() -> None:
    for guidance_embeds in (False, True):
        reference, ours = _models(guidance_embeds)
        assert set(ours.state_dict()) == set(reference.state_dict())


def test_rotary_embedding_matches_diffusers_pos_embed() -> None:
    _, ours = _models(guidance_embeds=False)
    reference = DiffusersFlux2(**TINY_CONFIG).pos_embed
    ids = _ids(TEXT_LEN, GRID_H, GRID_W, REFERENCE_TOKENS)
    for actual, expected in zip(ours.rotary_emb(ids), reference(ids), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_matches_diffusers_in_bfloat16() -> None:
    reference, ours = (model.to(torch.bfloat16) for model in _models(guidance_embeds=True))
    inputs = _inputs(guidance_embeds=True)
    for name in ("hidden_states", "encoder_hidden_states"):
        inputs[name] = inputs[name].to(torch.bfloat16)
    actual, expected = _run_both(reference, ours, inputs)
    assert actual.dtype == torch.bfloat16
    assert (actual.float() - expected.float()).abs().max().item() <= 3e-2


def test_config_default_is_flux2_dev_shaped() -> None:
    with torch.device("meta"):
        ours = Flux2Transformer2DModel(dataclasses.replace(Flux2DitConfig()))
    assert len(ours.transformer_blocks) == 8 and len(ours.single_transformer_blocks) == 48
    assert sum(p.numel() for p in ours.parameters()) > 30e9  # FLUX.2-dev is a 32 B-parameter DiT
