"""The exact path: every lossy option of the layer library turned off, for a quality check's reference run."""

import contextlib
from collections.abc import Iterator

from easel.runtime.layers.attention import exact_attention
from easel.runtime.layers.quantization import exact_weights


@contextlib.contextmanager
def exact_layers(enabled: bool = True) -> Iterator[None]:
    """Within the block (when enabled): exact attention kernels and full-precision weights, whatever the engine's
    lossy options (a lossy attention backend, a quantized DiT)."""
    if not enabled:
        yield
        return
    with exact_attention(), exact_weights():
        yield
