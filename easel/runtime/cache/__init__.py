"""Step caching: skipping a DiT's blocks at steps where they would change little (TeaCache, DBCache, TaylorSeer, a
fixed step mask), consulted by the standard DenoisingStage through every DiT's block-stack interface."""

from easel.runtime.cache.spec import GRAMMAR, PRESETS, CacheSpec, parse_cache_spec
from easel.runtime.cache.step_cache import BranchCache, StepCache

__all__ = ["GRAMMAR", "PRESETS", "BranchCache", "CacheSpec", "StepCache", "parse_cache_spec"]
