"""Parity of Easel's SD3 / SD3.5 DiT with Diffusers' SD3Transformer2DModel on tiny random models (CPU, fp32)."""

import dataclasses
import inspect

import pytest
import torch
from diffusers import SD3Transformer2DModel as DiffusersSD3

from easel.configs.models.dits.sd3 import SD3DitConfig
from easel.runtime.models.dits.sd3 import SD3Transformer2DModel

TOLERANCE = 1e-5
# Non-square latents (6 x 10 -> a 3 x 5 patch grid), cropped from the middle of an 8 x 8 position table.
BATCH, TEXT_LEN, LATENT_H, LATENT_W = 2, 7, 6, 10

_BASE = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=24,
    caption_projection_dim=16,
    pooled_projection_dim=20,
    out_channels=4,
    pos_embed_max_size=8,
)
CONFIGS = {
    # SD3-medium: plain MMDiT blocks, no qk-norm.
    "sd3-medium-like": _BASE,
    # SD3.5-medium: qk RMSNorm and dual attention in the first blocks (not the last, whose text stream is pre-only).
    "sd3.5-medium-like": dict(_BASE, qk_norm="rms_norm", dual_attention_layers=(0, 1)),
    # SD3.5-large: qk RMSNorm, no dual attention.
    "sd3.5-large-like": dict(_BASE, qk_norm="rms_norm"),
    # A config.json without a stored position table: the table is computed for the grid at hand.
    "no-pos-embed-max-size": dict(_BASE, pos_embed_max_size=None, sample_size=LATENT_H),
}

# The real checkpoints' transformer/config.json (the fields that differ from the defaults).
FULL_SIZE_CONFIGS = {
    "sd3-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192),
    "sd3.5-medium": dict(
        num_layers=24,
        num_attention_heads=24,
        caption_projection_dim=1536,
        pos_embed_max_size=384,
        qk_norm="rms_norm",
        dual_attention_layers=tuple(range(13)),
    ),
    "sd3.5-large": dict(
        num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192, qk_norm="rms_norm"
    ),
}


def _models(name: str) -> tuple[DiffusersSD3, SD3Transformer2DModel]:
    torch.manual_seed(0)
    reference = DiffusersSD3(**CONFIGS[name]).eval()
    # Randomize every weight (none is zero-initialized here, but the qk-norm weights start at exactly 1).
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.3)

    with torch.device("meta"):
        ours = SD3Transformer2DModel(SD3DitConfig(**CONFIGS[name]))
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


def _inputs(name: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    cfg = CONFIGS[name]
    return dict(
        hidden_states=torch.randn(BATCH, cfg["in_channels"], LATENT_H, LATENT_W, generator=generator),
        encoder_hidden_states=torch.randn(BATCH, TEXT_LEN, cfg["joint_attention_dim"], generator=generator),
        pooled_projections=torch.randn(BATCH, cfg["pooled_projection_dim"], generator=generator),
        # What StableDiffusion3Pipeline passes: the scheduler's timesteps, sigma * 1000.
        timestep=torch.tensor([999.0, 312.5]),
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_matches_diffusers(name: str) -> None:
    reference, ours = _models(name)
    assert list(ours.state_dict()) == list(reference.state_dict())
    # Everything ours holds comes from the checkpoint: no buffer a meta-built model would miss.
    assert {name for name, _ in ours.named_buffers()} <= set(reference.state_dict())
    assert not any(tensor.is_meta for tensor in ours.state_dict().values())


@pytest.mark.parametrize("skip_layers", [None, [1]], ids=["all-layers", "skip-layer-1"])
@pytest.mark.parametrize("name", CONFIGS)
def test_matches_diffusers(name: str, skip_layers: list[int] | None) -> None:
    reference, ours = _models(name)
    inputs = _inputs(name)

    with torch.no_grad():
        expected = reference(**inputs, skip_layers=skip_layers, return_dict=False)[0]
        actual = ours(**inputs, skip_layers=skip_layers)

        # The parity check must be able to fail: a different prompt moves the output well past the tolerance.
        other_text = dict(inputs, encoder_hidden_states=torch.randn_like(inputs["encoder_hidden_states"]))
        changed = ours(**other_text, skip_layers=skip_layers)

    assert actual.shape == (BATCH, CONFIGS[name]["out_channels"], LATENT_H, LATENT_W)
    error = (actual - expected).abs().max().item()
    print(f"SD3 DiT: max abs diff {error:.2e}")
    assert error <= TOLERANCE
    assert (changed - actual).abs().max().item() > 10 * TOLERANCE


def test_skip_layers_changes_the_output() -> None:
    _, ours = _models("sd3.5-medium-like")
    inputs = _inputs("sd3.5-medium-like")
    with torch.no_grad():
        full, skipped = ours(**inputs), ours(**inputs, skip_layers=[1])
    assert (full - skipped).abs().max().item() > 10 * TOLERANCE


@pytest.mark.parametrize("name", ["sd3-medium-like", "sd3.5-medium-like"])
def test_matches_diffusers_in_bfloat16(name: str) -> None:
    # Same op order, dtype casts and qk-norm rounding as Diffusers, so bf16 agrees too (bitwise on CPU today); the
    # tolerance is one to two bf16 ulps at the output's magnitude, loose enough for kernel changes, tight for a
    # wrong cast.
    reference, ours = (model.to(torch.bfloat16) for model in _models(name))
    inputs = _inputs(name)
    for key in ("hidden_states", "encoder_hidden_states", "pooled_projections"):
        inputs[key] = inputs[key].to(torch.bfloat16)

    with torch.no_grad():
        expected = reference(**inputs, return_dict=False)[0].float()
        actual = ours(**inputs)

    assert actual.dtype == torch.bfloat16
    assert (actual.float() - expected).abs().max().item() <= 1e-2 * expected.abs().max().item()


def test_position_table_is_cropped_from_the_centre() -> None:
    _, ours = _models("sd3-medium-like")
    table = ours.pos_embed.pos_embed.reshape(8, 8, -1)  # an 8 x 8 grid of tokens
    torch.testing.assert_close(ours.pos_embed.position_embedding(3, 5)[0], table[2:5, 1:6].reshape(15, -1))
    with pytest.raises(ValueError, match="position table"):
        ours.pos_embed.position_embedding(3, 9)


def test_rejects_a_caption_width_other_than_the_model_width() -> None:
    with pytest.raises(ValueError, match="caption_projection_dim"):
        SD3Transformer2DModel(SD3DitConfig(**dict(_BASE, caption_projection_dim=24)))


def test_config_from_dict_reads_a_diffusers_config_json() -> None:
    values = dict(FULL_SIZE_CONFIGS["sd3.5-medium"], dual_attention_layers=list(range(13)))
    config = SD3DitConfig.from_dict({"_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.31.0", **values})
    assert config.dual_attention_layers == tuple(range(13))
    assert config.qk_norm == "rms_norm" and config.pos_embed_max_size == 384


@pytest.mark.parametrize("name", FULL_SIZE_CONFIGS)
def test_full_size_configs_have_the_diffusers_keys_and_shapes(name: str) -> None:
    # Built on the meta device: no memory, no init.
    with torch.device("meta"):
        reference = DiffusersSD3(**FULL_SIZE_CONFIGS[name])
        ours = SD3Transformer2DModel(SD3DitConfig(**FULL_SIZE_CONFIGS[name]))
    expected = {key: tuple(tensor.shape) for key, tensor in reference.state_dict().items()}
    assert {key: tuple(tensor.shape) for key, tensor in ours.state_dict().items()} == expected


def test_default_config_matches_diffusers_defaults() -> None:
    parameters = inspect.signature(DiffusersSD3.__init__).parameters
    diffusers_defaults = {name: parameter.default for name, parameter in parameters.items() if name != "self"}
    assert dataclasses.asdict(SD3DitConfig()) == diffusers_defaults
