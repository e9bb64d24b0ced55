"""Layerwise offload: a DiT's repeated blocks live in host memory and visit the device one at a time.

The blocks are nearly all of a DiT's weights, and a forward needs only one of them at a time, so keeping them in
(pinned) host memory and copying each to the device just before it runs fits a model several times larger than the
device: resident are the block running and the `prefetch` blocks after it, whose copies (on a side CUDA stream)
overlap the running block's compute. Everything else of the DiT (embedders, final layer) stays on the device.

The mechanism is a forward pre-hook and a forward hook on each block, so it needs nothing from a model but
`repeated_blocks()`, and any span of blocks a step cache runs (`run_blocks(stack, start, end)`) works: a block that
was not prefetched is fetched on demand, and a prefetched block that a skipped span did not run is released by the
next block that does (the resident set is always within [i, i + prefetch] of the block i that runs). The DiT's own
forward hooks start the first block's copy as the forward begins and release whatever is left when it ends.
`modulated_input` (TeaCache's signal) reads the first block of `run_blocks`' stack outside that block's forward, so
it is wrapped to fetch that block too.

CUDA: copies run with non_blocking=True from pinned memory on a side stream; the compute stream waits for a block's
copy (an event) before using it, and every device copy is `record_stream`ed on the compute stream so the caching
allocator does not hand its memory out again before the compute stream is done with it. The host also waits, at each
release, for the GPU to finish the block before the released one: without that bound the host would run ahead of
the GPU and the memory of released blocks, not reusable until the GPU passes them, would pile up. Device memory then
holds at most 2 + prefetch blocks (1 + prefetch resident, 1 released but still being read).
On the CPU (and other devices) the same machinery runs with plain synchronous copies into separate storage.

Inference only (a backward would need every block again); Wan2.2's two experts each get their own offload. Hooks
sit on the blocks, so a block compiled with `nn.Module.compile` (regional compilation) would trace them: compose the
two by compiling block forwards rather than modules. Parameters change storage through `.data`, so LoRA merging
(which writes into the weight) should happen before offload is enabled; unmerged LoRA is unaffected.
"""

import collections
import contextlib
import dataclasses

import torch
from torch import nn

from easel.runtime.models.dits.block_stack import BlockStack, BlockStackDiT


@dataclasses.dataclass
class _Fetch:
    """One block's device copies: in flight until `ready` (a CUDA event; None elsewhere), installed once in use."""

    copies: list[torch.Tensor]
    ready: torch.cuda.Event | None
    installed: bool = False


class LayerwiseOffload:
    """Streams a DiT's repeated blocks from host memory to `device`, each resident only around its run."""

    def __init__(self, dit: BlockStackDiT, device: torch.device, prefetch: int = 1, record_events: bool = False):
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.dit, self.device, self.prefetch = dit, torch.device(device), prefetch
        self.blocks = dit.repeated_blocks()
        # run_blocks indexes the last num_blocks blocks (Z-Image's refiners run in embed, before them).
        self.stack_start = len(self.blocks) - dit.num_blocks
        if self.stack_start < 0:
            raise ValueError(f"{type(dit).__name__} lists fewer repeated blocks than run_blocks indexes")
        self.record_events = record_events
        self.events: list[tuple[str, int]] = []  # ("fetch" | "release", block index), when record_events
        self.max_resident = 0  # the most blocks with device copies at once, since enabling
        self._cuda = self.device.type == "cuda"
        self._side_stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._resident: dict[int, _Fetch] = {}
        self._released: collections.deque[torch.cuda.Event] = collections.deque()  # CUDA: the GPU's progress

        # Each block tensor (parameter or buffer) keeps its object, so modules and hooks holding it are unaffected;
        # only its storage moves, to the host copy at rest and to a device copy while its block runs.
        self._host: list[list[tuple[torch.Tensor, torch.Tensor]]] = [
            [(tensor, self._to_host(tensor.data)) for tensor in _tensors(block)] for block in self.blocks
        ]
        for tensor, host in (pair for pairs in self._host for pair in pairs):
            tensor.data = host
        in_blocks = {id(tensor) for pairs in self._host for tensor, _ in pairs}
        for tensor in _tensors(dit):
            if id(tensor) not in in_blocks:
                tensor.data = tensor.data.to(self.device)

        self._hooks = [dit.register_forward_pre_hook(self._start_forward), dit.register_forward_hook(self._end_forward)]
        for index, block in enumerate(self.blocks):
            self._hooks.append(block.register_forward_pre_hook(lambda *_, i=index: self._before(i)))
            self._hooks.append(block.register_forward_hook(lambda *_, i=index: self._release(i)))
        dit.modulated_input = self._modulated_input  # shadows the class's method until `remove`

    @property
    def resident(self) -> list[int]:
        """The blocks that have device copies now (in flight or in use)."""
        return list(self._resident)

    def remove(self) -> None:
        """Removes the hooks and puts the whole DiT on the device: the model as it runs without offload."""
        for hook in self._hooks:
            hook.remove()
        del self.dit.modulated_input
        for index in list(self._resident):
            self._release(index)
        for tensor, host in (pair for pairs in self._host for pair in pairs):
            tensor.data = host.to(self.device)
        self._host = []

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self._cuda:
            return tensor.to("cpu")
        # Pinned, so that the device copies can be asynchronous.
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor)

    def _record(self, kind: str, index: int) -> None:
        if self.record_events:
            self.events.append((kind, index))

    def _fetch(self, index: int) -> None:
        """Starts copying block `index` to the device (on the side stream, under CUDA)."""
        self._record("fetch", index)
        stream = torch.cuda.stream(self._side_stream) if self._cuda else contextlib.nullcontext()
        with stream:
            copies = [
                torch.empty_like(host, device=self.device).copy_(host, non_blocking=self._cuda)
                for _, host in self._host[index]
            ]
            ready = None
            if self._cuda:
                ready = torch.cuda.Event()
                ready.record(self._side_stream)
        self._resident[index] = _Fetch(copies, ready)
        self.max_resident = max(self.max_resident, len(self._resident))

    def _use(self, index: int) -> None:
        """Block `index`'s weights on the device, for the compute stream; other blocks outside its window released."""
        window = range(index, index + 1 + self.prefetch)
        for stale in [i for i in self._resident if i not in window]:  # prefetched for a span that did not run
            self._release(stale)
        if index not in self._resident:
            self._fetch(index)
        fetch = self._resident[index]
        if fetch.installed:
            return
        if self._cuda:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(fetch.ready)
            for copy in fetch.copies:
                copy.record_stream(compute)
        for (tensor, _), copy in zip(self._host[index], fetch.copies, strict=True):
            tensor.data = copy
        fetch.installed = True

    def _before(self, index: int) -> None:
        self._use(index)
        for ahead in range(index + 1, min(index + 1 + self.prefetch, len(self.blocks))):
            if ahead not in self._resident:
                self._fetch(ahead)

    def _release(self, index: int) -> None:
        """Points block `index`'s tensors back at their host copies, dropping the device copies."""
        fetch = self._resident.pop(index, None)
        if fetch is None:
            return
        self._record("release", index)
        if not fetch.installed:  # a prefetch that never ran: its tensors still point at the host
            return
        for tensor, host in self._host[index]:
            tensor.data = host
        if self._cuda:
            # Bounds how far the host runs ahead: wait until the GPU has finished the block released before this one.
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            self._released.append(done)
            while len(self._released) > 1:
                self._released.popleft().synchronize()

    def _start_forward(self, *_) -> None:
        if 0 not in self._resident:
            self._fetch(0)

    def _end_forward(self, *_) -> None:
        for index in list(self._resident):
            self._release(index)

    def _modulated_input(self, stack: BlockStack) -> torch.Tensor:
        self._use(self.stack_start)
        return type(self.dit).modulated_input(self.dit, stack)


def enable_layerwise_offload(
    dit: BlockStackDiT, device: torch.device, prefetch: int = 1, record_events: bool = False
) -> LayerwiseOffload:
    """Keeps `dit`'s repeated blocks in host memory and each on `device` only around its run, `prefetch` blocks
    copied ahead; the rest of the DiT moves to `device`. `record_events` logs each fetch and release in `.events`."""
    return LayerwiseOffload(dit, device, prefetch, record_events)


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]
