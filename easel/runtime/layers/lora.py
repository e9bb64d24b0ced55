"""LoRA on a linear layer: low-rank updates added at run time (dynamic) or merged into the weight (fast).

A `LoRALinear` attaches to an existing `nn.Linear` through a forward hook rather than replacing it, so that module
paths, state dicts and the layer's class (which tensor parallelism reads) stay as they are. On a tensor-parallel
layer each rank keeps the part of the low-rank pair its shard needs (`shard_lora`), so run time and merged weights
are those of the whole layer.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from easel.runtime.distributed.parallel_state import get_tp_world_size


@dataclasses.dataclass
class LoRAWeights:
    """One adapter's low-rank pair on one linear: delta W = scale * up @ down."""

    down: torch.Tensor  # (rank, in_features): lora_A / lora_down
    up: torch.Tensor  # (out_features, rank): lora_B / lora_up
    scale: float  # alpha / rank, before the user's strength


class LoRALinear:
    """The adapters on one linear layer, the strengths of the active ones, and the weight they were merged from."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self.adapters: dict[str, LoRAWeights] = {}
        self.active: dict[str, float] = {}  # adapter name -> strength, in the order the adapters are applied
        self.original: torch.Tensor | None = None  # the weight before merging; set while merged
        self._hook = linear.register_forward_hook(self._add_low_rank_path)

    @property
    def merged(self) -> bool:
        return self.original is not None

    def add(self, name: str, weights: LoRAWeights) -> None:
        """Adds a whole-layer adapter (as the file has it), keeping this rank's part of it."""
        weight = self.linear.weight
        down, up = weights.down, weights.up
        if hasattr(self.linear, "shard_lora"):
            down, up = self.linear.shard_lora(down, up)
        self.adapters[name] = dataclasses.replace(
            weights, down=down.to(weight.device, weight.dtype), up=up.to(weight.device, weight.dtype)
        )

    def remove(self, name: str) -> None:
        self.adapters.pop(name, None)
        self.active.pop(name, None)

    def set_active(self, strengths: dict[str, float]) -> None:
        """Activates the adapters of `strengths` that this layer has (a merged weight keeps them until `merge`)."""
        self.active = {name: strength for name, strength in strengths.items() if name in self.adapters}

    @torch.no_grad()
    def merge(self) -> None:
        """Writes W + sum(strength * scale * up @ down) into the weight, always from the original weight."""
        weight = self.linear.weight
        if self.original is None:
            # Kept on the CPU: a copy of every adapted weight on the accelerator would double the DiT's memory.
            self.original = weight.detach().to("cpu", copy=True)
        merged = self.original.to(weight.device, torch.float32, copy=True)
        for name, strength in self.active.items():
            adapter = self.adapters[name]
            merged += (adapter.up.float() @ adapter.down.float()) * (adapter.scale * strength)
        weight.copy_(merged.to(weight.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restores the weight bit for bit."""
        if self.original is not None:
            self.linear.weight.copy_(self.original)
            self.original = None

    def detach(self) -> None:
        """Restores the plain layer: the original weight, and no hook."""
        self.unmerge()
        self._hook.remove()

    def _add_low_rank_path(self, module: nn.Linear, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return output
        x = inputs[0]
        # A row-parallel layer's rank sees part of the input features: its low-rank activations are summed first.
        reduce = getattr(self.linear, "reduce_lora", None) if get_tp_world_size() > 1 else None
        # The order and form of peft's unmerged forward: base(x) + lora_B(lora_A(x)) * scaling, adapter by adapter.
        for name, strength in self.active.items():
            adapter = self.adapters[name]
            hidden = F.linear(x, adapter.down)  # (..., rank)
            if reduce is not None:
                hidden = reduce(hidden)
            output = output + F.linear(hidden, adapter.up) * (adapter.scale * strength)
        return output
