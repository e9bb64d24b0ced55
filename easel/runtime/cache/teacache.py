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
    # Fitted here (28 steps, 3 prompts, no CFG; mean abs error of the fit 8-13 % of the mean output change).
    "sd3": (-36.0384036, 18.2531008, 2.33462034, -0.827846403, 0.421980971),
    "qwen-image": (-30608.4894, 7523.35542, -671.075668, 26.7397771, -0.346644929),
    "z-image": (5.74364642, -14.2000439, 10.5114603, -1.16002911, 0.147385798),
    "wan": (102.964983, -136.962669, 59.3049586, -8.28609715, 0.545843982),  # Wan widths with no published fit
}


def rescale(family: str, relative_change: float) -> float:
    """The output's estimated relative change for the modulated input's; the identity for a family with no fit."""
    coefficients = COEFFICIENTS.get(family)
    if coefficients is None:
        return relative_change
    # A fit may dip below zero between its samples; a change never does.
    return max(float(np.polyval(coefficients, relative_change)), 0.0)
