"""Layerwise offload on the CPU: the same hooks and copies as on a GPU (streams aside), checked for the order of
fetches and releases, the number of resident blocks, and outputs bitwise equal to those without offload, through
whole forwards, partial spans and the step cache's skips. The CUDA stream path needs a GPU and is not run here."""

import pytest
import torch

from easel.runtime.cache.spec import parse_cache_spec
from easel.runtime.cache.step_cache import BranchCache
from easel.runtime.models.dits.layerwise_offload import enable_layerwise_offload
from tests import test_flux_dit, test_wan_dit

CPU = torch.device("cpu")


def _flux():
    """A tiny FLUX DiT (2 double- and 2 single-stream blocks) and its inputs, rotary table included."""
    _, dit = test_flux_dit._models(guidance_embeds=True)
    inputs = test_flux_dit._inputs(guidance_embeds=True)
    ids = torch.cat([torch.zeros(test_flux_dit.TEXT_LEN, 3), test_flux_dit._image_ids(4, 6)])
    return dit, dict(inputs, freqs_cis=dit.rotary_emb(ids))


def _events(text: str) -> list[tuple[str, int]]:
    """ "f0 r0" -> [("fetch", 0), ("release", 0)]."""
    kinds = {"f": "fetch", "r": "release"}
    return [(kinds[event[0]], int(event[1:])) for event in text.split()]


def _spy_on_blocks(offload) -> list[tuple[int, bool, int]]:
    """(block, ran on a device copy rather than its host tensors, resident blocks) for every block run."""
    seen = []
    for index, block in enumerate(offload.blocks):
        at_rest = [tensor.data_ptr() for tensor in block.parameters()]

        def look(module, args, i=index, at_rest=at_rest):
            moved = all(t.data_ptr() != ptr for t, ptr in zip(module.parameters(), at_rest, strict=True))
            seen.append((i, moved, len(offload.resident)))

        block.register_forward_pre_hook(look)  # after the offload's own pre-hook, so it sees the block installed
    return seen


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_flux_forward_is_bitwise_unchanged_and_streams_in_order(prefetch):
    dit, inputs = _flux()
    with torch.no_grad():
        expected = dit(**inputs)
        offload = enable_layerwise_offload(dit, CPU, prefetch=prefetch, record_events=True)
        seen = _spy_on_blocks(offload)
        first, second = dit(**inputs), dit(**inputs)

    assert torch.equal(first, expected) and torch.equal(second, expected)
    # Every block ran on its own device copy, with at most 1 + prefetch blocks resident, and none is left after.
    assert [(i, moved) for i, moved, _ in seen] == [(i, True) for i in range(4)] * 2
    assert max(resident for *_, resident in seen) <= 1 + prefetch and offload.max_resident <= 1 + prefetch
    assert offload.resident == []
    # Block 0 is fetched as the forward starts, each block's pre-hook fetches the blocks ahead (without prefetch,
    # each block is fetched on demand), its hook releases it.
    expected_events = {0: "f0 r0 f1 r1 f2 r2 f3 r3", 1: "f0 f1 r0 f2 r1 f3 r2 r3", 2: "f0 f1 f2 r0 f3 r1 r2 r3"}
    assert offload.events == _events(expected_events[prefetch]) * 2


def test_wan_forward_is_bitwise_unchanged():
    _, dit = test_wan_dit._models("t2v")
    freqs_cis = dit.rotary_emb(test_wan_dit.LATENT_FRAMES, test_wan_dit.LATENT_H, test_wan_dit.LATENT_W)
    inputs = dict(test_wan_dit._inputs("t2v"), freqs_cis=freqs_cis)
    with torch.no_grad():
        expected = dit(**inputs)
        offload = enable_layerwise_offload(dit, CPU, record_events=True)
        first, second = dit(**inputs), dit(**inputs)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert offload.events == _events("f0 f1 r0 r1") * 2
    assert offload.max_resident == 2


def test_spans_from_the_middle_fetch_on_demand_and_skipped_prefetches_are_released():
    dit, inputs = _flux()
    with torch.no_grad():
        stack = dit.embed(**inputs)
        dit.run_blocks(stack, 0, 1)
        dit.run_blocks(stack, 3, 4)  # blocks 1 and 2 skipped, as a cached step skips its middle
        expected = dit.finish(stack)

        offload = enable_layerwise_offload(dit, CPU, prefetch=1, record_events=True)
        stack = dit.embed(**inputs)  # called directly: the DiT's forward hooks do not run, the blocks' do
        dit.run_blocks(stack, 0, 1)
        assert offload.resident == [1]  # prefetched for a span that will not run it
        dit.run_blocks(stack, 3, 4)
        actual = dit.finish(stack)

    assert torch.equal(actual, expected)
    # Block 0 on demand, block 1 prefetched then released unused by block 3, itself fetched on demand.
    assert offload.events == _events("f0 f1 r0 r1 f3 r3")
    assert offload.resident == [] and offload.max_resident == 2


STEP_CACHE_CASES = {
    # Step 1 skips blocks 1-2: block 1, prefetched by block 0, is released unused when block 3 runs.
    "dbcache:fn=1,bn=1,threshold=1.0,warmup=1": "f0 f1 r0 r1 f3 r3",
    # Step 1 skips every block; its signal reads block 0's modulation outside block 0's forward.
    "teacache:threshold=2.0": "f0 r0",
}


@pytest.mark.parametrize("spec", list(STEP_CACHE_CASES))
def test_step_cache_steps_are_bitwise_unchanged(spec, monkeypatch):
    dit, inputs = _flux()
    cache_spec = parse_cache_spec(spec)

    def two_steps():  # step 0 computes every block, step 1 skips
        cache = BranchCache(cache_spec)
        outputs = []
        for step in range(2):
            cache.step = step
            outputs.append(dit(**inputs, cache=cache))
        assert (cache.computed, cache.skipped) == (1, 1)
        return outputs

    with torch.no_grad():
        expected = two_steps()
        offload = enable_layerwise_offload(dit, CPU, record_events=True)
        # TeaCache's signal must find block 0 on its device copy, not at its host tensors.
        first_block = dit.transformer_blocks[0]
        at_rest = [tensor.data_ptr() for tensor in first_block.parameters()]
        signal_on_device = []
        modulated_input = type(dit).modulated_input

        def spy(self, stack):
            pointers = [tensor.data_ptr() for tensor in first_block.parameters()]
            signal_on_device.append(all(p != q for p, q in zip(pointers, at_rest, strict=True)))
            return modulated_input(self, stack)

        monkeypatch.setattr(type(dit), "modulated_input", spy)
        actual = two_steps()

    assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True))
    assert offload.resident == [] and offload.max_resident <= 2
    assert offload.events == _events("f0 f1 r0 f2 r1 f3 r2 r3") + _events(STEP_CACHE_CASES[spec])
    assert signal_on_device == ([True, True] if spec.startswith("teacache") else [])


def test_remove_restores_the_model():
    dit, inputs = _flux()
    with torch.no_grad():
        expected = dit(**inputs)
        offload = enable_layerwise_offload(dit, CPU, record_events=True)
        offload.remove()
        actual = dit(**inputs)
    assert torch.equal(actual, expected)
    assert offload.events == [] and "modulated_input" not in vars(dit)
    assert not any(block._forward_pre_hooks or block._forward_hooks for block in dit.repeated_blocks())
