"""The parallel VAE decode (`easel.runtime.distributed.parallel_vae`) against the single-process decode.

Every VAE Easel's pipelines use (AutoencoderKL for FLUX / SD3, AutoencoderKLWan for Wan2.1 and Wan2.2,
AutoencoderKLQwenImage), 2D and several-frame 3D, with latent heights that do not divide by the ranks and odd
widths, on 2 and 4 gloo processes: one spawn per world size, every case decoded inside it. Each comparison can
fail: the same decode with a part left out (halo rows, GroupNorm statistics, attention keys) must move the pixels
by at least 10x the tolerance.
"""

import pytest
import torch

from easel.runtime.distributed.launch import run_on_ranks
from easel.runtime.distributed.parallel_state import ParallelLayout

TOLERANCE = 1e-4

# name: (VAE kind, latent shape, parts to leave out in the broken variants). Heights of 7, 9 and 5 latent rows
# give uneven splits on 2 and 4 ranks (7 on 4: 2, 2, 2, 1).
CASES = {
    "flux 2D, batch 2": ("flux", (2, 16, 7, 5), ("halo", "norm", "attention")),
    "sd3 2D": ("sd3", (1, 16, 9, 3), ("halo",)),
    "wan2.1 2D": ("wan", (1, 16, 1, 7, 5), ("halo", "attention")),
    "wan2.1 3D, 3 latent frames": ("wan", (1, 16, 3, 7, 5), ("halo", "attention")),
    "wan2.2 3D, 2 latent frames": ("wan22", (1, 48, 2, 5, 3), ("halo",)),
    "qwen-image 2D": ("qwen_image", (1, 16, 1, 7, 5), ("halo", "attention")),
    "qwen-image 3D, 2 latent frames": ("qwen_image", (1, 16, 2, 7, 5), ("halo",)),
}


def _vae_specs() -> dict[str, tuple[type, dict]]:
    """Each VAE kind's diffusers class and tiny config. Only the parent imports easel.testing (and with it
    transformers); the ranks get these pickled."""
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage, AutoencoderKLWan

    from easel.testing.flux import TINY_FLUX_VAE_CONFIG
    from easel.testing.qwen_image import TINY_QWEN_IMAGE_VAE_CONFIG
    from easel.testing.sd3 import TINY_SD3_VAE_CONFIG
    from easel.testing.wan import TINY_WAN22_VAE_CONFIG, TINY_WAN_VAE_CONFIG

    # Qwen-Image's at base width 4: at width 2 its 2-channel RMS norms make even the single-process fp32 decode
    # differ from fp64 by up to 1e-3, which no comparison at 1e-4 can stand.
    qwen_image_config = {**TINY_QWEN_IMAGE_VAE_CONFIG, "base_dim": 4}
    return {
        "flux": (AutoencoderKL, TINY_FLUX_VAE_CONFIG),
        "sd3": (AutoencoderKL, TINY_SD3_VAE_CONFIG),
        "wan": (AutoencoderKLWan, TINY_WAN_VAE_CONFIG),
        "wan22": (AutoencoderKLWan, TINY_WAN22_VAE_CONFIG),
        "qwen_image": (AutoencoderKLQwenImage, qwen_image_config),
    }


def _build_vae(cls: type, config: dict) -> torch.nn.Module:
    """A tiny VAE with every weight perturbed (diffusers zero-inits some), the same in every process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = cls(**config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return vae


def _latents(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))


def _decode_cases(specs: dict[str, tuple[type, dict]]) -> dict[str, dict[str, torch.Tensor]]:
    """On every rank: each case's parallel decode, and its broken variants' (keyed by the part left out)."""
    from easel.runtime.distributed.parallel_vae import decode

    vaes = {kind: _build_vae(cls, config) for kind, (cls, config) in specs.items()}
    results = {}
    with torch.no_grad():
        for name, (kind, shape, broken) in CASES.items():
            latents = _latents(shape)
            results[name] = {"": decode(vaes[kind], latents)}
            results[name].update({part: decode(vaes[kind], latents, _skip=(part,)) for part in broken})
    return results


@pytest.fixture(scope="module")
def references() -> dict[str, torch.Tensor]:
    """Each case's single-process decode."""
    vaes = {kind: _build_vae(cls, config) for kind, (cls, config) in _vae_specs().items()}
    references = {}
    with torch.no_grad():
        for name, (kind, shape, _) in CASES.items():
            references[name] = vaes[kind].decode(_latents(shape), return_dict=False)[0]
    return references


def test_world_size_one_is_the_plain_decode(references):
    from easel.runtime.distributed.parallel_vae import decode

    kind, shape, _ = CASES["wan2.1 3D, 3 latent frames"]
    with torch.no_grad():
        vae = _build_vae(*_vae_specs()[kind])
        assert torch.equal(decode(vae, _latents(shape)), references["wan2.1 3D, 3 latent frames"])


@pytest.mark.parametrize("layout", [ParallelLayout(ulysses=2), ParallelLayout(ring=2, ulysses=2)], ids=["2", "4"])
def test_parallel_decode_matches_one_process(layout, references):
    ranks = run_on_ranks(_decode_cases, layout, _vae_specs())
    for name, reference in references.items():
        assert reference.abs().std() > 0.05, f"{name}: a trivial reference"
        # Every rank returns the whole image; all must match.
        diff = max((results[name][""] - reference).abs().max().item() for results in ranks)
        print(f"PARALLEL VAE {name}, {layout.world_size} ranks: max abs diff {diff:.2e}")
        assert diff <= TOLERANCE, name
        for part in CASES[name][2]:
            moved = (ranks[0][name][part] - reference).abs().max().item()
            print(f"PARALLEL VAE {name}, {layout.world_size} ranks, without {part}: max abs diff {moved:.2e}")
            assert moved >= 10 * TOLERANCE, f"{name}: leaving out {part} changes nothing"
