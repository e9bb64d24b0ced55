"""Parity of Easel's HunyuanVideo-1.5 DiT with Diffusers' HunyuanVideo15Transformer3DModel on a tiny random model
(CPU, fp32): text-to-video (image tokens all zeros) and image-to-video, with padded prompts and glyphs."""

import pytest
import torch
from diffusers import HunyuanVideo15Transformer3DModel as DiffusersHunyuanVideo15

from easel.configs.models.dits.hunyuanvideo15 import HunyuanVideo15DitConfig
from easel.runtime.models.dits.hunyuanvideo15 import HunyuanVideo15Transformer3DModel

TOLERANCE = 1e-5
BATCH, FRAMES, HEIGHT, WIDTH = 2, 3, 4, 6

TINY_CONFIG = dict(
    in_channels=9,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    num_refiner_layers=2,
    text_embed_dim=12,
    text_embed_2_dim=10,
    image_embed_dim=8,
    rope_axes_dim=(4, 6, 6),
)


def _models() -> tuple[DiffusersHunyuanVideo15, HunyuanVideo15Transformer3DModel]:
    torch.manual_seed(0)
    reference = DiffusersHunyuanVideo15(**TINY_CONFIG).eval()
    with torch.no_grad():  # every weight random, none left at a trivial init
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    with torch.device("meta"):
        ours = HunyuanVideo15Transformer3DModel(HunyuanVideo15DitConfig(**TINY_CONFIG))
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


def _inputs(image: bool, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])  # padded prompts of 5 and 3 tokens
    glyph_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    image_embeds = torch.randn(BATCH, 5, 8, generator=generator) if image else torch.zeros(BATCH, 5, 8)
    return dict(
        hidden_states=torch.randn(BATCH, 9, FRAMES, HEIGHT, WIDTH, generator=generator),
        timestep=torch.tensor([300.0, 850.0]),
        encoder_hidden_states=torch.randn(BATCH, 7, 12, generator=generator),
        encoder_attention_mask=mask,
        encoder_hidden_states_2=torch.randn(BATCH, 4, 10, generator=generator),
        encoder_attention_mask_2=glyph_mask,
        image_embeds=image_embeds,
    )


def _ours(model, inputs):
    return model(**inputs, freqs_cis=model.rotary_emb(FRAMES, HEIGHT, WIDTH))


def test_state_dict_keys_match_diffusers() -> None:
    reference, ours = _models()
    assert set(ours.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "i2v"])
def test_matches_diffusers(image: bool) -> None:
    reference, ours = _models()
    inputs = _inputs(image)
    with torch.no_grad():
        expected = reference(**inputs, return_dict=False)[0]
        actual = _ours(ours, inputs)
        # The check must be able to fail: another prompt (its real tokens only) moves the output.
        other = inputs["encoder_hidden_states"].clone()
        other[:, :3] = torch.randn_like(other[:, :3])
        changed = _ours(ours, dict(inputs, encoder_hidden_states=other))
        padding = inputs["encoder_hidden_states"].clone()
        padding[1, 3:] = 100.0  # the padding of the second prompt changes nothing
        padded = _ours(ours, dict(inputs, encoder_hidden_states=padding))
    assert actual.shape == expected.shape == (BATCH, 4, FRAMES, HEIGHT, WIDTH)
    error = (actual - expected).abs().max().item()
    print(f"HunyuanVideo-1.5 DiT ({'i2v' if image else 't2v'}): max abs diff {error:.2e}")
    assert error <= TOLERANCE
    assert (changed - actual).abs().max().item() > 10 * TOLERANCE
    assert (padded - actual).abs().max().item() <= TOLERANCE


def test_rotary_embedding_matches_diffusers() -> None:
    _, ours = _models()
    reference = DiffusersHunyuanVideo15(**TINY_CONFIG).rope
    expected = reference(torch.zeros(1, 9, FRAMES, HEIGHT, WIDTH))
    for actual, wanted in zip(ours.rotary_emb(FRAMES, HEIGHT, WIDTH), expected, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=1e-6)
