"""Step caching: per request, per branch (each CFG pass of each expert), decide at every step whether a DiT runs its
whole block stack or reuses what it computed at earlier steps.

The stack is split into a head (the first `fn` blocks, always run), a middle and a tail (the last `bn` blocks,
always run). A skipped step adds an estimate of the middle's residual (its output minus its input) to the middle's
input: the last computed residual, or with TaylorSeer its Taylor expansion in the step index. TeaCache and a fixed
step mask skip the whole stack (fn = bn = 0); DBCache keeps a head whose residual is its signal.
"""

import torch

from easel.errors import InvalidInputError
from easel.runtime.cache.spec import CacheSpec
from easel.runtime.cache.teacache import rescale
from easel.runtime.distributed.communication import all_gather, all_reduce
from easel.runtime.distributed.sequence_shard import SequenceShard
from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT


class StepCache:
    """One request's cache: a `BranchCache` per branch, made when the denoising loop first runs the branch."""

    def __init__(self, spec: CacheSpec, experts: list[torch.nn.Module], num_steps: int):
        for dit in experts:
            if not isinstance(dit, BlockStackDiT):
                raise InvalidInputError(f"{type(dit).__name__} has no block stack to cache; use cache=none")
            if spec.fn + spec.bn > dit.num_blocks:
                raise InvalidInputError(
                    f"fn={spec.fn} + bn={spec.bn} blocks exceed the {dit.num_blocks} blocks of {type(dit).__name__}"
                )
        if spec.compute is not None and spec.compute[-1] >= num_steps:
            raise InvalidInputError(f"compute lists step {spec.compute[-1]}, but the request has {num_steps} steps")
        self.spec = spec
        self.branches: dict[str, BranchCache] = {}

    def attach(self, passes: dict[str, dict], step: int, expert: int | None = None) -> None:
        """Hands each pass's kwargs the cache of its branch, at this step."""
        for name, kwargs in passes.items():
            key = name if expert is None else f"expert{expert}/{name}"
            branch = self.branches.setdefault(key, BranchCache(self.spec))
            branch.step = step
            kwargs["cache"] = branch

    def summary(self) -> dict[str, dict[str, int]]:
        """Computed and skipped steps per branch; under CFG parallelism each rank runs only some branches, so the
        counts are gathered (a rank that did not run a branch has zeros there, one that did the true counts)."""
        names = sorted(self.branches)
        counts = torch.tensor([[self.branches[n].computed, self.branches[n].skipped] for n in names])
        counts = all_gather(counts[None], "cfg", dim=0).amax(dim=0)
        return {
            name: {"computed": int(c), "skipped": int(s)} for name, (c, s) in zip(names, counts.tolist(), strict=True)
        }


class BranchCache:
    """One branch's state across the steps of a request: its signal, its residual estimate and its counts."""

    def __init__(self, spec: CacheSpec):
        self.spec = spec
        self.step = 0
        self.computed = self.skipped = self.in_a_row = 0
        self.previous_signal: torch.Tensor | None = None
        self.accumulated = 0.0  # TeaCache's rescaled change since the last computed step
        self.estimate = ResidualEstimate(spec.order if spec.taylorseer else 0)

    def run(self, dit: BlockStackDiT, stack: BlockStack) -> None:
        """The block stack of one forward, its middle computed or estimated."""
        spec = self.spec
        middle = (spec.fn, dit.num_blocks - spec.bn)
        head_input = stack.streams[0]
        dit.run_blocks(stack, 0, middle[0])
        signal = None
        if spec.method == "teacache":
            signal = dit.modulated_input(stack)
            if self.previous_signal is not None:
                self.accumulated += rescale(dit.cache_family, relative_l1(signal, self.previous_signal, stack.shard))
            self.previous_signal = signal
        elif spec.method == "dbcache":
            signal = stack.streams[0] - head_input  # the head's residual

        # With no tail the final layer reads only the image stream, so only its residual is kept.
        kept = len(stack.streams) if spec.bn else 1
        if self._must_compute(signal, stack.shard):
            middle_input = stack.streams[:kept]
            dit.run_blocks(stack, *middle)
            self.estimate.update(self.step, [out - inp for out, inp in zip(stack.streams, middle_input, strict=False)])
            if spec.method == "dbcache":
                self.previous_signal = signal
            self.accumulated = 0.0
            self.computed += 1
            self.in_a_row = 0
        else:
            residuals = self.estimate.predict(self.step)
            stack.streams = [s + r for s, r in zip(stack.streams, residuals, strict=False)] + stack.streams[kept:]
            self.skipped += 1
            self.in_a_row += 1
        dit.run_blocks(stack, middle[1], dit.num_blocks)

    def _must_compute(self, signal: torch.Tensor | None, shard: SequenceShard) -> bool:
        spec = self.spec
        if not self.estimate.ready:
            return True
        if spec.method == "steps":
            if spec.compute is not None:
                return self.step in spec.compute
            return self.step < spec.warmup or (self.step - spec.warmup) % spec.every == 0
        if self.step < spec.warmup:
            return True
        if spec.max_cached is not None and self.skipped >= spec.max_cached:
            return True
        if spec.max_continuous is not None and self.in_a_row >= spec.max_continuous:
            return True
        if spec.method == "teacache":
            return self.accumulated >= spec.threshold
        return relative_l1(signal, self.previous_signal, shard) >= spec.threshold


class ResidualEstimate:
    """A span's residual at a skipped step from those at computed steps: the last one (order 0), or TaylorSeer's
    expansion in the step index, its derivatives the divided differences of the computed residuals."""

    def __init__(self, order: int):
        self.order = order
        self.terms: list[list[torch.Tensor]] = []  # terms[k]: the k-th derivative of each stream's residual
        self.step = 0  # of the last update

    @property
    def ready(self) -> bool:
        return bool(self.terms)

    def update(self, step: int, residuals: list[torch.Tensor]) -> None:
        terms = [residuals]
        for k in range(min(self.order, len(self.terms))):
            terms.append([(new - old) / (step - self.step) for new, old in zip(terms[k], self.terms[k], strict=True)])
        self.terms, self.step = terms, step

    def predict(self, step: int) -> list[torch.Tensor]:
        estimate = list(self.terms[0])
        factor = 1.0
        for k, derivative in enumerate(self.terms[1:], start=1):
            factor *= (step - self.step) / k
            estimate = [e + factor * d for e, d in zip(estimate, derivative, strict=True)]
        return estimate


def relative_l1(x: torch.Tensor, reference: torch.Tensor, shard: SequenceShard) -> float:
    """mean |x - reference| / mean |reference| over the real tokens of the whole stream (summed over the SP group,
    so every rank takes the same decision)."""
    if shard.size > 1:
        real = min(max(shard.length - shard.start, 0), shard.local_length)
        x, reference = x[:, :real], reference[:, :real]
    sums = torch.stack([(x - reference).abs().sum(), reference.abs().sum()]).float()
    difference, size = all_reduce(sums, "sp").tolist()
    return difference / size if size else 0.0
