"""Step caching: skipping a DiT's blocks at steps where they would change little (TeaCache, DBCache, TaylorSeer, a
fixed step mask), consulted by the standard DenoisingStage through every DiT's block-stack interface.

`spec` (the grammar, no torch: the server's front end checks specs with it) and `step_cache` (the mechanism) are
imported from their modules; this package imports nothing, so that reading a spec never loads torch.
"""
