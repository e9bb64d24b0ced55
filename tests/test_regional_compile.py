"""Regional compilation (easel/runtime/models/dits/regional_compile.py): one graph per block class, compiled once and
reused by every block of the class, at every step and by every request of one size, with the outputs of eager mode.

Graph counting runs Dynamo alone (a `CompileCounter` backend, no code generation); the parity checks run inductor,
one compile per block class and family, shared by the DiT-level and the pipeline-level comparison (same shapes).
"""

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from easel import DiffGenerator
from easel.runtime.models.dits.block_stack import BlockStackDiT
from easel.runtime.models.dits.regional_compile import compile_repeated_blocks
from tests import test_flux_dit, test_wan_dit

TOLERANCE = 1e-4
REQUEST = dict(prompt="a red circle", seed=0, num_inference_steps=2, output_type="np")
# kind -> (a small request's size, the same with another resolution, its DiT modules, its number of block classes).
PIPELINES = {
    "flux": (dict(height=64, width=64), dict(height=64, width=96), ["transformer"], 2),  # double-, single-stream
    "wan2.2-a14b": (  # two experts, of one block class
        dict(height=32, width=48, num_frames=5),
        dict(height=48, width=48, num_frames=5),
        ["transformer", "transformer_2"],
        1,
    ),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Counts start from nothing, and no compiled code outlives its test."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _flux_dit() -> tuple[torch.nn.Module, dict]:
    _, dit = test_flux_dit._models(guidance_embeds=True)
    image_ids = test_flux_dit._image_ids(test_flux_dit.GRID_H, test_flux_dit.GRID_W)
    ids = torch.cat([torch.zeros(test_flux_dit.TEXT_LEN, 3), image_ids])
    return dit, dict(test_flux_dit._inputs(guidance_embeds=True), freqs_cis=dit.rotary_emb(ids))


def _wan_dit() -> tuple[torch.nn.Module, dict]:
    _, dit = test_wan_dit._models("t2v")
    grid = (test_wan_dit.LATENT_FRAMES, test_wan_dit.LATENT_H, test_wan_dit.LATENT_W)
    return dit, dict(test_wan_dit._inputs("t2v"), freqs_cis=dit.rotary_emb(*grid))


def _pixels(result) -> np.ndarray:
    return result.frames if result.frames is not None else result.images


def compile_dits(generator: DiffGenerator, **compile_kwargs) -> list[str]:
    """Regionally compiles every DiT of a loaded pipeline (as enable_torch_compile does at load); their names."""
    names = [name for name, module in generator.pipeline.modules.items() if isinstance(module, BlockStackDiT)]
    for name in names:
        compile_repeated_blocks(generator.pipeline.get_module(name), **compile_kwargs)
    return names


@pytest.mark.parametrize("build, classes", [(_flux_dit, 2), (_wan_dit, 1)], ids=["flux", "wan"])
def test_one_graph_per_block_class_across_steps(build, classes: int) -> None:
    dit, inputs = build()
    blocks = dit.repeated_blocks()
    assert len({type(block) for block in blocks}) == classes < len(blocks)
    # Hooks on the blocks, one lambda per block told apart by a default argument as layerwise offload registers them,
    # stay eager: they run at every call and compile nothing.
    hook_calls = []
    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda *_, index=index: hook_calls.append(index))
    backend = CompileCounter()
    compile_repeated_blocks(dit, backend=backend)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        dit(**inputs)
        assert backend.frame_count == classes
        # Later steps: a new timestep and new latents of the same shape reuse every graph.
        for timestep in (0.6, 0.2):
            latents = torch.randn(inputs["hidden_states"].shape, generator=generator)
            dit(**dict(inputs, hidden_states=latents, timestep=torch.full_like(inputs["timestep"], timestep)))
    assert backend.frame_count == classes
    assert hook_calls == list(range(len(blocks))) * 3


@pytest.mark.parametrize("kind", list(PIPELINES))
def test_requests_of_one_size_compile_once(kind: str, tiny_pipeline) -> None:
    size, other_size, dit_names, classes = PIPELINES[kind]
    generator = DiffGenerator.from_pretrained(tiny_pipeline(kind), device="cpu", progress_bar=False)
    backend = CompileCounter()
    assert compile_dits(generator, backend=backend) == dit_names
    generator.generate(**REQUEST, **size)
    assert backend.frame_count == classes
    # Another prompt and seed at the same size compile nothing, nor does a step cache that skips some steps' blocks.
    generator.generate(**dict(REQUEST, prompt="a blue square", seed=1), **size)
    if kind == "flux":
        cached = generator.generate(**dict(REQUEST, num_inference_steps=8, cache="teacache:threshold=0.5"), **size)
        assert cached.cache["branches"]["cond"]["skipped"] > 0
    assert backend.frame_count == classes
    # A second resolution compiles one symbolic-shape graph per class, which a third one reuses.
    generator.generate(**REQUEST, **other_size)
    generator.generate(**REQUEST, **dict(other_size, height=96))
    assert backend.frame_count == 2 * classes


@pytest.mark.parametrize("kind", list(PIPELINES))
def test_compiled_matches_eager(kind: str, tiny_pipeline) -> None:
    size, _, _, classes = PIPELINES[kind]
    generator = DiffGenerator.from_pretrained(tiny_pipeline(kind), device="cpu", progress_bar=False)
    dit = generator.pipeline.get_module("transformer")
    calls = []
    hook = dit.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    eager = generator.generate(**REQUEST, **size)
    hook.remove()
    with torch.inference_mode():  # as the pipeline runs the DiT, so that its generate below reuses this compile
        eager_dit = dit(**calls[0])

    compile_dits(generator)
    with torch.inference_mode():
        dit_error = (dit(**calls[0]) - eager_dit).abs().max().item()
    pixel_error = np.abs(_pixels(generator.generate(**REQUEST, **size)) - _pixels(eager)).max()
    print(f"{kind}: compiled vs eager max abs diff, DiT {dit_error:.1e}, pixels {pixel_error:.1e}")
    assert dit_error <= TOLERANCE and pixel_error <= TOLERANCE
    assert counters["stats"]["unique_graphs"] == classes
