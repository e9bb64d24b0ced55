"""TeaCache's rescaling: a per-family polynomial from the relative change of the first block's modulated input to
the (estimated) relative change of the model's output, which the cache accumulates against its threshold."""

import numpy as np

# np.polyval order (highest power first). "flux" and "wan-*" are TeaCache's published fits (ali-vilab/TeaCache:
# TeaCache4FLUX on FLUX.1-dev; TeaCache4Wan2.1 on Wan2.1-T2V 1.3B and 14B). The others were fitted here by
# benchmarks/fit_teacache.py on the tiny random-weight models of easel.testing, which is all this machine has: refit
# them on real weights before relying on their thresholds.
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "flux": (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01),
    "wan-1.3b": (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
    "wan-14b": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
}


def rescale(family: str, relative_change: float) -> float:
    """The output's estimated relative change for the modulated input's; the identity for a family with no fit."""
    coefficients = COEFFICIENTS.get(family)
    return relative_change if coefficients is None else float(np.polyval(coefficients, relative_change))
