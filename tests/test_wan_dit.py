"""Parity of Easel's Wan DiT with Diffusers' WanTransformer3DModel on tiny random models (CPU, fp32)."""

import dataclasses

import pytest
import torch
from diffusers import WanTransformer3DModel as DiffusersWan

from easel.configs.models.dits.wanvideo import WanDitConfig
from easel.runtime.models.dits.wanvideo import WanTransformer3DModel

TOLERANCE = 1e-5
# Diffusers' I2V attention splits the image tokens off by assuming 512 text tokens (UMT5's padded length).
BATCH, TEXT_LEN, IMAGE_LEN = 2, 512, 257
LATENT_FRAMES, LATENT_H, LATENT_W = 3, 4, 6  # non-square, several frames: 3 x 2 x 3 patches

TINY_T2V = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=40,
    num_layers=2,
    rope_max_seq_len=32,
)
CONFIGS = {
    "t2v": TINY_T2V,
    # Wan2.1-I2V: noisy latents + 4 mask channels + 16 image-latent channels in, CLIP image tokens cross-attended.
    "i2v": dict(TINY_T2V, in_channels=36, image_dim=16, added_kv_proj_dim=24),
    # Wan2.2-TI2V: 48 latent channels and one timestep per token.
    "ti2v": dict(TINY_T2V, in_channels=48, out_channels=48, cross_attn_norm=False),
}


def _models(kind: str) -> tuple[DiffusersWan, WanTransformer3DModel]:
    torch.manual_seed(0)
    reference = DiffusersWan(**CONFIGS[kind]).eval()
    # Diffusers zero-initializes some tensors; randomize every weight so none is trivially zero or one.
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.2)

    with torch.device("meta"):
        ours = WanTransformer3DModel(WanDitConfig(**CONFIGS[kind]))
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


def _inputs(kind: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    cfg = CONFIGS[kind]
    latents = torch.randn(BATCH, cfg["in_channels"], LATENT_FRAMES, LATENT_H, LATENT_W, generator=generator)
    inputs = dict(
        hidden_states=latents,
        timestep=torch.tensor([300.0, 857.0]),
        encoder_hidden_states=torch.randn(BATCH, TEXT_LEN, cfg["text_dim"], generator=generator),
    )
    if kind == "i2v":
        inputs["encoder_hidden_states_image"] = torch.randn(BATCH, IMAGE_LEN, cfg["image_dim"], generator=generator)
    if kind == "ti2v":
        # As WanPipeline with expand_timesteps: 0 on the (clean) first latent frame's tokens, t elsewhere.
        tokens = LATENT_FRAMES * (LATENT_H // 2) * (LATENT_W // 2)
        first_frame = (LATENT_H // 2) * (LATENT_W // 2)
        timestep = inputs["timestep"][:, None].expand(BATCH, tokens).clone()
        timestep[:, :first_frame] = 0.0
        inputs["timestep"] = timestep
    return inputs


def test_state_dict_keys_match_diffusers() -> None:
    for kind in CONFIGS:
        reference, ours = _models(kind)
        assert list(ours.state_dict()) == list(reference.state_dict())
        assert not list(ours.buffers())


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_matches_diffusers(kind: str) -> None:
    reference, ours = _models(kind)
    inputs = _inputs(kind)

    with torch.no_grad():
        expected = reference(**inputs, return_dict=False)[0]
        freqs_cis = ours.rotary_emb(LATENT_FRAMES, LATENT_H, LATENT_W)
        actual = ours(**inputs, freqs_cis=freqs_cis)

        # The parity check must be able to fail: a different prompt moves the output well past the tolerance.
        other_text = dict(inputs, encoder_hidden_states=torch.randn_like(inputs["encoder_hidden_states"]))
        changed = ours(**other_text, freqs_cis=freqs_cis)

    assert actual.shape == (BATCH, CONFIGS[kind]["out_channels"], LATENT_FRAMES, LATENT_H, LATENT_W)
    error = (actual - expected).abs().max().item()
    print(f"Wan DiT ({kind}): max abs diff {error:.2e}")
    assert error <= TOLERANCE
    assert (changed - actual).abs().max().item() > 10 * TOLERANCE
    if kind == "i2v":
        with torch.no_grad():
            other_image = dict(
                inputs, encoder_hidden_states_image=torch.randn_like(inputs["encoder_hidden_states_image"])
            )
            assert (ours(**other_image, freqs_cis=freqs_cis) - actual).abs().max().item() > 10 * TOLERANCE


def _to_bfloat16_keeping_fp32_modules(model: torch.nn.Module) -> torch.nn.Module:
    """bf16 but for the modules Diffusers' `from_pretrained(torch_dtype=bf16)` keeps in float32 (the rotary
    tables, the time embedder, the modulation tables); a plain `.to(bf16)` would round its rotary table."""
    keep = DiffusersWan._keep_in_fp32_modules
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        fp32 = any(part in keep for part in name.split("."))
        tensor.data = tensor.data.to(torch.float32 if fp32 else torch.bfloat16)
    return model


def test_matches_diffusers_in_bfloat16() -> None:
    # Same op order and dtype casts as Diffusers (fp32 norms and modulation), so bf16 agrees too (bitwise on CPU
    # today); the tolerance is about one bf16 ulp at the output magnitude, loose for kernels, tight for a wrong cast.
    reference, ours = (_to_bfloat16_keeping_fp32_modules(model) for model in _models("t2v"))
    inputs = _inputs("t2v")
    for name in ("hidden_states", "encoder_hidden_states"):
        inputs[name] = inputs[name].to(torch.bfloat16)

    with torch.no_grad():
        expected = reference(**inputs, return_dict=False)[0]
        actual = ours(**inputs, freqs_cis=ours.rotary_emb(LATENT_FRAMES, LATENT_H, LATENT_W))

    assert actual.dtype == torch.bfloat16
    error = (actual.float() - expected.float()).abs().max().item()
    print(f"Wan DiT (bf16): max abs diff {error:.2e}")
    assert error <= 3e-2


def test_rotary_embedding_matches_diffusers_rope() -> None:
    _, ours = _models("t2v")
    reference = DiffusersWan(**TINY_T2V).rope
    latents = torch.zeros(1, 16, LATENT_FRAMES, LATENT_H, LATENT_W)
    for actual, expected in zip(ours.rotary_emb(LATENT_FRAMES, LATENT_H, LATENT_W), reference(latents), strict=True):
        assert actual.dtype == torch.float32
        torch.testing.assert_close(actual, expected[0, :, 0], rtol=0, atol=0)


def test_image_conditioned_model_requires_image_embeddings() -> None:
    _, ours = _models("i2v")
    inputs = _inputs("i2v")
    del inputs["encoder_hidden_states_image"]
    with pytest.raises(ValueError, match="encoder_hidden_states_image"):
        ours(**inputs, freqs_cis=ours.rotary_emb(LATENT_FRAMES, LATENT_H, LATENT_W))


@pytest.mark.parametrize(
    "overrides, blocks",
    [
        ({}, 40),  # Wan2.1-T2V-14B, each Wan2.2-A14B expert
        (dict(num_attention_heads=12, num_layers=30, ffn_dim=8960), 30),  # Wan2.1-T2V-1.3B
        (dict(in_channels=36, image_dim=1280, added_kv_proj_dim=5120), 40),  # Wan2.1-I2V-14B
        (dict(num_attention_heads=24, num_layers=30, ffn_dim=14336, in_channels=48, out_channels=48), 30),  # TI2V-5B
    ],
    ids=["t2v-14b", "t2v-1.3b", "i2v-14b", "ti2v-5b"],
)
def test_full_size_configs_have_diffusers_keys(overrides: dict, blocks: int) -> None:
    # The real configs build the same key set and shapes as Diffusers' (both on meta, no memory).
    with torch.device("meta"):
        ours = WanTransformer3DModel(dataclasses.replace(WanDitConfig(), **overrides))
        reference = DiffusersWan(**overrides)
    assert len(ours.blocks) == blocks
    expected = {name: tensor.shape for name, tensor in reference.state_dict().items()}
    assert {name: tensor.shape for name, tensor in ours.state_dict().items()} == expected
