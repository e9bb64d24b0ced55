"""`PipelineStage`: one step of a pipeline, run on a `Req` batch, timed and optionally verified."""

import time

import torch

from easel.errors import StageVerificationError
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.server_args import ServerArgs


def is_set(value: object) -> bool:
    """A batch field counts as set when it is not None and, for a list or dict, not empty."""
    if value is None:
        return False
    if isinstance(value, list | tuple | dict):
        return len(value) > 0
    return True


class PipelineStage:
    """A unit of work on the batch; subclasses implement `forward` and declare the fields they rely on."""

    # Batch fields this stage needs set before it runs, and those it must have set when it is done.
    input_fields: tuple[str, ...] = ()
    output_fields: tuple[str, ...] = ()
    # True when `forward_many` runs several requests' batches together (the server's batching scheduler starts and
    # finishes requests together); a failure in it then fails them all, where other stages fail one request.
    shares_work_across_requests = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        raise NotImplementedError

    def verify_input(self, batch: Req, server_args: ServerArgs) -> list[str]:
        """Names of the fields this stage needs that are unset; extend it for conditional needs."""
        return [field for field in self.input_fields if not is_set(getattr(batch, field))]

    def verify_output(self, batch: Req, server_args: ServerArgs) -> list[str]:
        """Names of the fields this stage should have set but did not."""
        return [field for field in self.output_fields if not is_set(getattr(batch, field))]

    def check_input(self, batch: Req, server_args: ServerArgs) -> None:
        """Raises if stage verification is on and a field this stage needs is unset."""
        if server_args.enable_stage_verification and (missing := self.verify_input(batch, server_args)):
            raise StageVerificationError(
                f"{self.name} needs batch field(s) {', '.join(missing)}, but no earlier stage set them"
            )

    def __call__(self, batch: Req, server_args: ServerArgs) -> Req:
        return self.run_many([batch], server_args)[0]

    def forward_many(self, batches: list[Req], server_args: ServerArgs) -> list[Req]:
        """Several requests' batches: one after another, unless the stage can do them together (and says so with
        `shares_work_across_requests`)."""
        return [self.forward(batch, server_args) for batch in batches]

    def run_many(self, batches: list[Req], server_args: ServerArgs) -> list[Req]:
        """`forward_many`, timed (each batch gets the stage's wall time) and optionally verified."""
        for batch in batches:
            self.check_input(batch, server_args)
        start = time.perf_counter()
        batches = self.forward_many(batches, server_args)
        if server_args.torch_device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: wait so the timing is the stage's own
        seconds = time.perf_counter() - start
        for batch in batches:
            batch.timings[self.name] = seconds
            if server_args.enable_stage_verification and (missing := self.verify_output(batch, server_args)):
                raise StageVerificationError(f"{self.name} left batch field(s) {', '.join(missing)} unset")
        return batches
