"""Step-level batching: one DiT forward over the passes of several requests' denoising runs.

Passes share a forward when they run the same DiT, their row kwargs (`PipelineConfig.dit_row_kwargs`) agree in all
but the batch dimension, and every other kwarg is equal: the rotary tables, image grids, skip-layer lists. So a
request of another size, another prompt length (Qwen-Image's trimmed prompts) or with a step cache (whose state is
its own) runs in a forward of its own, in the same iteration as the others.

Bucketing by exact shape, not packing sequences of different lengths into one forward with key-padding masks:
measured on the 71 M-parameter FLUX DiT on 2 CPU threads (benchmarks/bench_serve.py --compare-packing), a 256x256
and a 320x320 request cost 0.80 s as two forwards and 0.86 s as one forward with the shorter padded to the longer,
before any mask (which would also take attention off its fused kernels). Padding wastes the padded rows' work and
buys nothing where the matmuls already run at full speed; where they do not (the demo model's 16 tokens a row),
requests of one size already fill a forward.
"""

import math
from collections.abc import Iterator
from typing import Any

import torch

from easel.runtime.pipelines_core.stages.denoising import DenoisingRun

Pass = tuple[DenoisingRun, dict[str, Any]]  # a run and the DiT kwargs of one of its passes


def predict_together(runs: list[DenoisingRun]) -> list[list[torch.Tensor]]:
    """Each run's predictions for its current step, one per pass in order, passes sharing forwards where they can."""
    work = [(run, kwargs) for run in runs for kwargs in run.passes()]
    predictions: dict[int, torch.Tensor] = {}
    for group in _groups(list(enumerate(work))):
        for (index, _), prediction in zip(group, _forward([item for _, item in group]), strict=True):
            predictions[index] = prediction
    by_run: dict[int, list[torch.Tensor]] = {id(run): [] for run in runs}
    for index, (run, _) in enumerate(work):
        by_run[id(run)].append(predictions[index])
    return [by_run[id(run)] for run in runs]


def row_tokens(run: DenoisingRun) -> int:
    """The image tokens a run adds to each step's forwards: its rows (samples times passes) times the tokens of its
    latents, which every DiT here cuts into 2x2 patches."""
    batch = run.batch
    passes = 2 if batch.do_classifier_free_guidance else 1
    return passes * batch.raw_latent_shape[0] * math.prod(batch.raw_latent_shape[2:]) // 4


def _groups(indexed: list[tuple[int, Pass]]) -> Iterator[list[tuple[int, Pass]]]:
    """The passes, split into groups that can share a forward (a pass that can share with none is a group alone)."""
    buckets: dict[Any, list[tuple[int, Pass]]] = {}
    for index, (run, kwargs) in indexed:
        if not run.config.dit_row_kwargs:
            yield [(index, (run, kwargs))]
            continue
        buckets.setdefault(_signature(run, kwargs), []).append((index, (run, kwargs)))
    for bucket in buckets.values():
        while bucket:  # equal signatures may still hold different values in tensors that are not rows
            _, (leader, leader_kwargs) = bucket[0]
            shared = [item for item in bucket if _same_shared(leader, leader_kwargs, item[1][1])]
            taken = {index for index, _ in shared}
            bucket = [item for item in bucket if item[0] not in taken]
            yield shared


def _signature(run: DenoisingRun, kwargs: dict[str, Any]) -> tuple:
    rows = run.config.dit_row_kwargs
    parts = []
    for name in sorted(kwargs):
        value = kwargs[name]
        if name in rows and torch.is_tensor(value):
            parts.append((name, "rows", tuple(value.shape[1:]), value.dtype, value.device))
        else:
            parts.append((name, _fingerprint(value)))
    return (id(run.transformer), run.x.shape[1:], tuple(parts))


def _fingerprint(value: Any) -> Any:
    """A hashable summary of a non-row kwarg: equal values have equal fingerprints."""
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    if isinstance(value, list | tuple):
        return tuple(_fingerprint(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _fingerprint(v)) for k, v in sorted(value.items()))
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return ("object", id(value))  # e.g. a step cache's branch: shared only with itself


def _same_shared(run: DenoisingRun, kwargs: dict[str, Any], other: dict[str, Any]) -> bool:
    rows = run.config.dit_row_kwargs
    return all(_same(value, other[name]) for name, value in kwargs.items() if name not in rows)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if isinstance(a, list | tuple):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return all(_same(a[k], b[k]) for k in a)
    return a == b  # scalars; other objects have equal fingerprints only when they are one object


def _forward(group: list[Pass]) -> list[torch.Tensor]:
    """The group's passes through one forward of their DiT, its output cut back into each pass's rows."""
    leader, leader_kwargs = group[0]
    if len(group) == 1:
        return [leader.predict(leader_kwargs)]
    rows = leader.config.dit_row_kwargs
    kwargs = {
        name: torch.cat([kw[name] for _, kw in group]) if name in rows and torch.is_tensor(value) else value
        for name, value in leader_kwargs.items()
    }
    output = leader.transformer(**kwargs)  # (sum of rows, ...)
    chunks = output.split([run.x.shape[0] for run, _ in group])
    return [run.postprocess(chunk) for (run, _), chunk in zip(group, chunks, strict=True)]
