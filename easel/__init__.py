"""Easel: a diffusion inference and serving engine."""

from easel.errors import EaselError
from easel.runtime.entrypoints.diff_generator import DiffGenerator, GenerationResult

__all__ = ["DiffGenerator", "EaselError", "GenerationResult"]
