"""Parity of Easel's GLM-Image DiT with Diffusers' GlmImageTransformer2DModel on a tiny random model (CPU, fp32),
text-to-image and image-to-image (condition images cached in write mode, read by the conditional pass)."""

import pytest
import torch
from diffusers import GlmImageTransformer2DModel as DiffusersGlmImage
from diffusers.models.transformers.transformer_glm_image import GlmImageKVCache

from easel.configs.models.dits.glm_image import GlmImageDitConfig
from easel.runtime.models.dits.glm_image import GlmImageTransformer2DModel

TOLERANCE = 1e-5
BATCH, TEXT_LEN, HEIGHT, WIDTH = 2, 5, 8, 12  # latents: 4 x 6 patches

TINY_CONFIG = dict(
    patch_size=2,
    in_channels=4,
    out_channels=4,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    text_embed_dim=12,
    time_embed_dim=16,
    condition_dim=8,
    prior_vq_quantizer_codebook_size=32,
)


def _models() -> tuple[DiffusersGlmImage, GlmImageTransformer2DModel]:
    torch.manual_seed(0)
    reference = DiffusersGlmImage(**TINY_CONFIG).eval()
    with torch.no_grad():  # every weight random, none left at a trivial init
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    with torch.device("meta"):
        ours = GlmImageTransformer2DModel(GlmImageDitConfig(**TINY_CONFIG))
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


def _inputs(seed: int = 1, height: int = HEIGHT, width: int = WIDTH, text_len: int = TEXT_LEN, batch: int = BATCH):
    generator = torch.Generator().manual_seed(seed)
    tokens = (height // 2) * (width // 2)
    return dict(
        hidden_states=torch.randn(batch, 4, height, width, generator=generator),
        encoder_hidden_states=torch.randn(batch, text_len, 12, generator=generator),
        prior_token_id=torch.randint(0, 32, (batch, tokens), generator=generator),
        prior_token_drop=torch.zeros(batch, tokens, dtype=torch.bool),
        timestep=torch.tensor([300.0, 850.0])[:batch],
        target_size=torch.tensor([[64.0, 96.0]]).repeat(batch, 1),
        crop_coords=torch.zeros(batch, 2),
    )


def _ours(model, inputs, kv_caches=None):
    height, width = inputs["hidden_states"].shape[-2:]
    return model(**inputs, freqs_cis=model.rotary_emb(height, width), kv_caches=kv_caches)


def test_state_dict_keys_match_diffusers() -> None:
    reference, ours = _models()
    assert set(ours.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize("drop", [False, True], ids=["conditional", "prior dropped"])
def test_matches_diffusers(drop: bool) -> None:
    reference, ours = _models()
    inputs = _inputs()
    inputs["prior_token_drop"][:] = drop
    with torch.no_grad():
        expected = reference(**inputs, return_dict=False)[0]
        actual = _ours(ours, inputs)
        other_text = _ours(ours, dict(inputs, encoder_hidden_states=torch.randn_like(inputs["encoder_hidden_states"])))
    assert actual.shape == expected.shape == inputs["hidden_states"].shape
    error = (actual - expected).abs().max().item()
    print(f"GLM-Image DiT: max abs diff {error:.2e}")
    assert error <= TOLERANCE
    assert (other_text - actual).abs().max().item() > 10 * TOLERANCE


def test_condition_images_through_the_kv_cache_match_diffusers() -> None:
    """Two condition images written one after the other (each attending to itself), then a conditional pass that
    reads them and an unconditional one that skips them."""
    reference, ours = _models()
    conditions = [
        _inputs(seed=2, height=8, width=8, text_len=0, batch=1),
        _inputs(seed=3, height=4, width=8, text_len=0, batch=1),
    ]
    for condition in conditions:
        condition["timestep"] = torch.zeros(1)
    inputs = _inputs()
    with torch.no_grad():
        theirs = GlmImageKVCache(num_layers=2)
        theirs.set_mode("write")
        for condition in conditions:
            reference(**condition, kv_caches=theirs)
        theirs.set_mode("read")
        expected = reference(**inputs, kv_caches=theirs, return_dict=False)[0]
        theirs.set_mode("skip")
        expected_skip = reference(**inputs, kv_caches=theirs, return_dict=False)[0]

        caches = ours.new_kv_cache()
        for cache in caches:
            cache.read, cache.record = False, True
        for condition in conditions:
            _ours(ours, condition, caches)
        for cache in caches:
            cache.read, cache.record = True, False
        actual = _ours(ours, inputs, caches)
        actual_skip = _ours(ours, inputs)
    assert (actual - expected).abs().max().item() <= TOLERANCE
    assert (actual_skip - expected_skip).abs().max().item() <= TOLERANCE
    assert (actual - actual_skip).abs().max().item() > 10 * TOLERANCE  # the condition images matter
    assert caches[0].tokens == 16 + 8


def test_rotary_embedding_matches_diffusers() -> None:
    _, ours = _models()
    reference = DiffusersGlmImage(**TINY_CONFIG).rope
    for actual, expected in zip(
        ours.rotary_emb(HEIGHT, WIDTH), reference(torch.zeros(1, 4, HEIGHT, WIDTH)), strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
