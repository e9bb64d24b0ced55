"""The shared DiT-level parallel tester: one DiT under every parallel layout against the same DiT in one process.

A DiT's test subclasses `ParallelDiTMixin` and sets `dit` to a `ParallelDiTCase`: the model class, a tiny config,
and inputs in two variants, "even" (every stream divides by the degrees) and "odd" (none does, so shards are
padded and masked). All layouts of one world size run in one launch of gloo processes (a launch costs seconds);
each rank builds its own shard of the model from the same full random weights, as the loader does from a checkpoint.
Every comparison can fail: the broken layouts (attention without its exchange, a row-parallel layer without its
all-reduce) must move the output by at least ten times the tolerance.
"""

import dataclasses
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

from easel.runtime.distributed import ParallelLayout, get_world_rank, init_distributed
from easel.runtime.distributed.launch import run_on_ranks
from easel.runtime.layers.linear import RowParallelLinear, checkpoint_sharder

TOLERANCE = 1e-5  # max abs difference of the DiT's output, CPU fp32
VARIANTS = ("even", "odd")

LAYOUTS = {
    2: {"ulysses2": ParallelLayout(ulysses=2), "ring2": ParallelLayout(ring=2), "tp2": ParallelLayout(tp=2)},
    4: {
        "ulysses2-ring2": ParallelLayout(ring=2, ulysses=2),
        "tp2-ulysses2": ParallelLayout(ulysses=2, tp=2),
        "ring4": ParallelLayout(ring=4),
    },
}
# name -> (layout, what is broken): each must visibly fail.
BROKEN = {
    "ulysses2-no-exchange": (ParallelLayout(ulysses=2), "exchange"),
    "tp2-no-all-reduce": (ParallelLayout(tp=2), "all_reduce"),
}


@dataclasses.dataclass
class ParallelDiTCase:
    """What the tester needs of one DiT; subclasses give `inputs` (and `forward`, when the DiT needs more than
    `model(**inputs)`)."""

    model_cls: type[nn.Module]
    config: Any

    def inputs(self, variant: str) -> dict[str, Any]:
        """Deterministic forward inputs; "odd" has stream lengths that no degree divides."""
        raise NotImplementedError

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        return model(**inputs)

    def build(self, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """The model on this rank (its shards under TP), with `state_dict`'s weights, or random ones when None."""
        with torch.device("meta"):
            model = self.model_cls(self.config)
        if state_dict is None:
            generator = torch.Generator().manual_seed(0)
            # Random everywhere: Diffusers-style zero inits would hide mistakes in the layers they feed. Matrices are
            # scaled by their fan-in so that activations, and so the output, stay of order one, where the tolerance
            # means what it says.
            state_dict = {
                key: torch.randn(value.shape, generator=generator)
                * (0.2 if value.dim() == 1 else value.shape[1] ** -0.5)
                for key, value in model.state_dict().items()
            }
        shard = checkpoint_sharder(model)
        model.load_state_dict({key: shard(key, value) for key, value in state_dict.items()}, strict=True, assign=True)
        return model.eval().requires_grad_(False)


def _no_exchange(query, key, value, attn_mask, local_attention, kv_cache=None):
    """Sequence-parallel attention with its all-to-all / ring left out: each rank attends only to its own keys."""
    return local_attention(query, key, value) if attn_mask is None else local_attention(query, key, value, attn_mask)


def _without_all_reduce(self, x):
    return nn.functional.linear(x, self.weight, self.bias)


def _run_layouts(dit: ParallelDiTCase, weights: str, layouts: dict[str, tuple[ParallelLayout, str | None]]):
    """On every rank: each layout's outputs per variant (every rank returns its own, to check that they agree)."""
    state_dict = torch.load(weights)
    results = {}
    for name, (layout, broken) in layouts.items():
        init_distributed(layout)  # the world stays; only its groups change
        patches = {
            None: [],
            "exchange": [mock.patch("easel.runtime.layers.attention.sequence_parallel_attention", _no_exchange)],
            "all_reduce": [mock.patch.object(RowParallelLinear, "forward", _without_all_reduce)],
        }[broken]
        for patch in patches:
            patch.start()
        try:
            model = dit.build(state_dict)
            with torch.no_grad():
                results[name] = {variant: dit.forward(model, dit.inputs(variant)) for variant in VARIANTS}
        finally:
            for patch in patches:
                patch.stop()
    results["rank"] = get_world_rank()
    return results


class ParallelDiTMixin:
    """Every layout of LAYOUTS (and BROKEN) against one process, for the DiT of `dit`."""

    dit: ParallelDiTCase

    @pytest.fixture(scope="class")
    @classmethod
    def single(cls, tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
        """The full random weights (saved for the ranks) and the single-process outputs per variant."""
        model = cls.dit.build()
        weights = str(tmp_path_factory.mktemp("parallel-dit") / "weights.pt")
        torch.save(model.state_dict(), weights)
        with torch.no_grad():
            return weights, {variant: cls.dit.forward(model, cls.dit.inputs(variant)) for variant in VARIANTS}

    @pytest.fixture(scope="class")
    @classmethod
    def parallel(cls, single) -> dict[int, list[dict]]:
        """Every rank's results, per world size, from one launch each."""
        weights, _ = single
        runs = {}
        for world, layouts in LAYOUTS.items():
            named = {name: (layout, None) for name, layout in layouts.items()}
            if world == 2:
                named |= BROKEN
            runs[world] = run_on_ranks(_run_layouts, next(iter(layouts.values())), cls.dit, weights, named)
        return runs

    @pytest.mark.parametrize("world,layout", [(w, name) for w, names in LAYOUTS.items() for name in names])
    def test_layout_matches_one_process(self, single, parallel, world: int, layout: str) -> None:
        _, expected = single
        for variant in VARIANTS:
            outputs = [rank_results[layout][variant] for rank_results in parallel[world]]
            error = max((out - expected[variant]).abs().max().item() for out in outputs)
            print(f"PARALLEL DIT {type(self).__name__} {layout} {variant}: max abs diff {error:.2e}")
            assert outputs[0].shape == expected[variant].shape
            assert error <= TOLERANCE

    @pytest.mark.parametrize("broken", list(BROKEN))
    def test_broken_layout_fails_visibly(self, single, parallel, broken: str) -> None:
        _, expected = single
        for variant in VARIANTS:
            moved = (parallel[2][0][broken][variant] - expected[variant]).abs().max().item()
            assert moved > 10 * TOLERANCE, f"{broken} ({variant}) moved the output by only {moved:.2e}"
