"""`TimestepPreparationStage`: the scheduler's timesteps and sigmas for this request."""

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from easel.errors import InvalidInputError
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs

# A model-specific hook: extra keyword arguments for `scheduler.set_timesteps` (FLUX's `mu`, custom sigmas).
TimestepKwargsFn = Callable[[Req, Any, ServerArgs], dict[str, Any]]


class TimestepPreparationStage(PipelineStage):
    """Sets the scheduler's schedule and copies it onto the batch."""

    input_fields = ("num_inference_steps",)
    output_fields = ("timesteps", "sigmas")

    def __init__(self, scheduler, prepare_extra_timestep_kwargs: list[TimestepKwargsFn] | tuple = ()):
        self.scheduler = scheduler
        self.prepare_extra_timestep_kwargs = list(prepare_extra_timestep_kwargs)

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        kwargs: dict[str, Any] = {}
        for prepare in self.prepare_extra_timestep_kwargs:
            kwargs.update(prepare(batch, self.scheduler, server_args))
        if kwargs.get("sigmas") is None:  # a sigma schedule fixes the number of steps by itself
            kwargs["num_inference_steps"] = batch.num_inference_steps
        set_schedule(self.scheduler, batch, device=server_args.torch_device, **kwargs)
        return batch


def set_schedule(scheduler, batch: Req, **set_timesteps_kwargs) -> None:
    """Sets the scheduler's schedule and copies it (and the scheduler) onto the batch, refusing one the scheduler
    cannot define."""
    with np.errstate(invalid="ignore", divide="ignore"):  # an undefined schedule is reported below, not warned of
        scheduler.set_timesteps(**set_timesteps_kwargs)
    if not torch.isfinite(scheduler.sigmas).all():  # e.g. a terminal-stretched schedule of a single step: 0 / 0
        raise InvalidInputError(
            f"{batch.num_inference_steps} step(s) are too few for this model's scheduler; use at least 2"
        )
    batch.timesteps = scheduler.timesteps
    batch.sigmas = scheduler.sigmas.tolist()
    batch.num_inference_steps = len(batch.timesteps)
    # The request's own copy: requests prepared before any of them denoises (the server's batching) each step theirs.
    batch.scheduler = copy.deepcopy(scheduler)
