"""Easel: a diffusion inference and serving engine."""

from typing import TYPE_CHECKING

from easel.errors import EaselError

if TYPE_CHECKING:
    from easel.runtime.entrypoints.diff_generator import DiffGenerator, GenerationResult

__all__ = ["DiffGenerator", "EaselError", "GenerationResult"]


def __getattr__(name: str):
    # Imported on first use, so that `easel --help` and the CLI's argument errors answer without loading torch.
    if name in ("DiffGenerator", "GenerationResult"):
        from easel.runtime.entrypoints import diff_generator

        return getattr(diff_generator, name)
    raise AttributeError(f"module 'easel' has no attribute {name!r}")
