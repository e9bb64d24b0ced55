"""FLUX's DiT under every parallel layout (Ulysses, ring, USP, TP and TP x Ulysses) against one process, and its
LoRA adapters under tensor parallelism."""

import dataclasses

import torch

from easel.configs.models.dits.flux import FluxDitConfig
from easel.runtime.distributed import ParallelLayout
from easel.runtime.distributed.launch import run_on_ranks
from easel.runtime.layers.linear import ParallelLinear, full_features
from easel.runtime.layers.lora import LoRALinear, LoRAWeights
from easel.runtime.models.dits.flux import FluxTransformer2DModel
from tests.parallel_dit import TOLERANCE, ParallelDiTCase, ParallelDiTMixin

# 4 heads so Ulysses 2 x TP 2 has a head per rank; odd lengths: 7 text and 5 x 3 image tokens.
CONFIG = FluxDitConfig(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=4,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
    guidance_embeds=True,
)
LENGTHS = {"even": (8, 4, 4), "odd": (7, 5, 3)}  # text tokens, image rows, image columns


@dataclasses.dataclass
class FluxCase(ParallelDiTCase):
    def inputs(self, variant: str) -> dict:
        text_len, rows, cols = LENGTHS[variant]
        generator = torch.Generator().manual_seed(1)
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1], ids[..., 2] = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
        return dict(
            hidden_states=torch.randn(2, rows * cols, 16, generator=generator),
            encoder_hidden_states=torch.randn(2, text_len, 32, generator=generator),
            pooled_projections=torch.randn(2, 32, generator=generator),
            timestep=torch.tensor([0.3, 0.85]),
            guidance=torch.tensor([3.5, 1.5]),
            position_ids=torch.cat([torch.zeros(text_len, 3), ids.reshape(-1, 3)]),
        )

    def forward(self, model, inputs: dict) -> torch.Tensor:
        position_ids = inputs.pop("position_ids")
        return model(**inputs, freqs_cis=model.rotary_emb(position_ids))


class TestFluxParallel(ParallelDiTMixin):
    dit = FluxCase(FluxTransformer2DModel, CONFIG)


def _attach_random_lora(model, merged: bool) -> None:
    """One adapter on every tensor-parallel linear, drawn at the layers' whole widths, as a LoRA file holds it."""
    generator = torch.Generator().manual_seed(2)
    for _, layer in sorted(model.named_modules()):
        if isinstance(layer, ParallelLinear):
            in_features, out_features = full_features(layer)
            down = torch.randn(4, in_features, generator=generator) * in_features**-0.5
            up = torch.randn(out_features, 4, generator=generator) * 0.5
            lora = LoRALinear(layer)
            lora.add("style", LoRAWeights(down, up, scale=0.5))
            lora.set_active({"style": 0.8})
            if merged:
                lora.merge()


def _lora_outputs(weights: str) -> dict[str, torch.Tensor]:
    """The DiT with the adapter, run-time and merged (on every rank of the launch's layout)."""
    outputs = {}
    for merged in (False, True):
        model = TestFluxParallel.dit.build(torch.load(weights))
        _attach_random_lora(model, merged)
        with torch.no_grad():
            outputs[f"merged={merged}"] = TestFluxParallel.dit.forward(model, TestFluxParallel.dit.inputs("odd"))
    return outputs


def test_lora_under_tensor_parallelism_matches_one_process(tmp_path) -> None:
    dit = TestFluxParallel.dit
    plain = dit.build()
    weights = str(tmp_path / "weights.pt")
    torch.save(plain.state_dict(), weights)
    expected = _lora_outputs(weights)
    with torch.no_grad():
        without = dit.forward(plain, dit.inputs("odd"))
    layouts = {"tp2": ParallelLayout(tp=2), "tp2-ulysses2": ParallelLayout(ulysses=2, tp=2)}
    for name, layout in layouts.items():
        ranks = run_on_ranks(_lora_outputs, layout, weights)
        for mode, reference in expected.items():
            error = max((outputs[mode] - reference).abs().max().item() for outputs in ranks)
            print(f"PARALLEL LORA FLUX {name} {mode}: max abs diff {error:.2e}")
            assert error <= TOLERANCE
    assert (expected["merged=False"] - without).abs().max().item() > 10 * TOLERANCE  # the adapter does something
