"""Regional compilation: torch.compile each repeated block of a DiT in place, not the whole model.

A DiT is almost all its repeated blocks, and every block of one class runs the same code on its own weights. Dynamo
inlines nn.Modules, so a block's parameters are inputs of its graph rather than constants baked into it, and its
guards check the module's structure, not its identity: the first block of a class compiles a graph (cached on the
class's `forward` code) that every other block of the class, in this model or another (Wan2.2's second expert), then
reuses. Blocks of one class built differently (SD3's last block, which passes the text on; Z-Image's unmodulated
refiners) get a graph of their own. Compile time is that of one block per class, not of the whole stack, and embed,
finish and the step cache (easel/runtime/cache) stay eager Python, free to run or skip any span of blocks each step.
"""

from typing import Any

import torch

from easel.runtime.models.dits.block_stack import BlockStackDiT

COMPILE_DEFAULTS: dict[str, Any] = {
    # torch's automatic dynamic shapes: the first graph of a class is static, and serves every step and every request
    # of that size (each step's timestep is a tensor input; no block takes a Python scalar that changes per step).
    # A second size recompiles once into a graph symbolic in the sizes that changed, which then serves every size; a
    # Python number that does change (an unmerged LoRA's strength, read by its hook) likewise becomes an input once.
    # dynamic=False would compile again for each resolution, and for each prompt length where the text is not padded
    # (Qwen-Image's), and under fullgraph=True fail outright past torch._dynamo.config.recompile_limit (8) graphs.
    "dynamic": None,
    # A graph break would cut a block into several graphs with Python between them on every call: make it an error.
    "fullgraph": True,
}


def compile_repeated_blocks(dit: BlockStackDiT, **compile_kwargs: Any) -> None:
    """Compiles each repeated block of `dit` in place (once); `compile_kwargs` override `COMPILE_DEFAULTS`."""
    options = {**COMPILE_DEFAULTS, **compile_kwargs}
    for block in dit.repeated_blocks():
        # The forward, not the module (`nn.Module.compile`): that would compile the block's hooks too, each a frame
        # of its own, and layerwise offload's (one lambda per block, told apart by a default argument) would then
        # recompile for every block. Hooks stay eager around the compiled forward, and, set on the instance, it
        # leaves the class (every other model's blocks) eager.
        block.forward = torch.compile(block.forward, **options)
