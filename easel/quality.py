"""How far a lossy speed option (step caching, later FP8, sparse attention, few-step samplers) moves the output.

Every metric compares an accelerated run's images or video frames with the exact run's, frame by frame. Inputs may be
a PIL image, a list of them (a batch, or a video's frames), a list of such lists (several videos), or a float array in
0..1 with channels last, (H, W, C), (N, H, W, C) or (N, F, H, W, C): what `GenerationResult.images` / `.frames` hold
with output_type "pil" or "np". PIL images and uint8 arrays are read as 0..255 and scaled to 0..1.
"""

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image

from easel.demo.checker import attribute_accuracy
from easel.errors import InvalidInputError

# SSIM constants of Wang et al. 2004, with the Gaussian window scikit-image uses for gaussian_weights=True.
_K1, _K2 = 0.01, 0.03
_SIGMA = 1.5
_RADIUS = int(3.5 * _SIGMA + 0.5)  # scipy's truncate=3.5: 5, an 11-tap window
_WINDOW = 2 * _RADIUS + 1


def _frames(images: Any) -> np.ndarray:
    """Any accepted input form as a float64 (frames, H, W, C) array; images and video frames share the frame axis."""
    if isinstance(images, Image.Image):
        array = np.asarray(images)
        return _frames(array if array.ndim == 3 else array[..., None])
    if isinstance(images, list | tuple):
        if not images:
            raise InvalidInputError("no images to compare: the list is empty")
        parts = [_frames(item) for item in images]
        if len({part.shape[1:] for part in parts}) > 1:
            raise InvalidInputError(f"images of one input differ in shape: {sorted({p.shape[1:] for p in parts})}")
        return np.concatenate(parts)
    if not isinstance(images, np.ndarray):
        raise InvalidInputError(f"cannot compare a {type(images).__name__}: give PIL images or a numpy array")
    array = images / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)
    if array.ndim == 2:  # a grayscale image
        array = array[..., None]
    if array.ndim not in (3, 4, 5):
        raise InvalidInputError(f"an image array is (H, W, C), (N, H, W, C) or (N, F, H, W, C), not {array.shape}")
    return array.reshape((-1, *array.shape[-3:]))


def _pair(output: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    out, ref = _frames(output), _frames(reference)
    if out.shape != ref.shape:
        raise InvalidInputError(
            f"output and reference differ in shape: {out.shape} vs {ref.shape} (frames, height, width, channels)"
        )
    return out, ref


def psnr(output: Any, reference: Any, data_range: float = 1.0) -> float:
    """Mean over frames of each frame's PSNR in dB; inf if any frame is identical to its reference."""
    out, ref = _pair(output, reference)
    mse = ((out - ref) ** 2).mean(axis=(1, 2, 3))
    # Per frame, as video quality is usually reported; an identical frame's inf makes the mean inf, deliberately:
    # averaging it away would need a cap that no standard defines.
    with np.errstate(divide="ignore"):
        per_frame = 10.0 * np.log10(data_range**2 / mse)
    return float(per_frame.mean())


def _blur(x: np.ndarray) -> np.ndarray:
    """Gaussian filter over H and W of a (frames, H, W, C) array, borders mirrored as scipy's mode='reflect'."""
    taps = np.exp(-0.5 * (np.arange(-_RADIUS, _RADIUS + 1) / _SIGMA) ** 2)
    taps /= taps.sum()
    for axis in (1, 2):  # the Gaussian is separable: one 1-D pass per spatial axis
        widths = [(0, 0)] * x.ndim
        widths[axis] = (_RADIUS, _RADIUS)
        padded = np.pad(x, widths, mode="symmetric")  # numpy's "symmetric" (d c b a | a b c d) is scipy's "reflect"
        x = np.lib.stride_tricks.sliding_window_view(padded, _WINDOW, axis=axis) @ taps
    return x


def ssim(output: Any, reference: Any, data_range: float = 1.0) -> float:
    """Mean over frames of each frame's SSIM (Wang et al. 2004), as scikit-image's Gaussian-weighted default."""
    out, ref = _pair(output, reference)
    if min(out.shape[1:3]) < _WINDOW:
        raise InvalidInputError(f"SSIM needs images of at least {_WINDOW}x{_WINDOW} pixels, not {out.shape[1:3]}")
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mu_x, mu_y = _blur(out), _blur(ref)
    # Population (not sample) variances, as use_sample_covariance=False.
    var_x = _blur(out * out) - mu_x**2
    var_y = _blur(ref * ref) - mu_y**2
    cov = _blur(out * ref) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    # Like scikit-image, average only where the window lies inside the image: crop half a window off each border.
    inner = index[:, _RADIUS:-_RADIUS, _RADIUS:-_RADIUS, :]
    return float(inner.mean(axis=(1, 2, 3)).mean())  # channels weigh equally, as their crops are the same size


def max_abs_diff(output: Any, reference: Any) -> float:
    """The largest absolute difference of any pixel value, on the 0..1 scale."""
    out, ref = _pair(output, reference)
    return float(np.abs(out - ref).max())


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclasses.dataclass
class QualityReport:
    """An accelerated run's quality against the exact run's output, and both runs' wall times."""

    psnr_db: float  # inf where every frame is identical
    ssim: float
    max_abs_diff: float
    seconds: float  # the accelerated run's wall time
    exact_seconds: float
    # Demo model only: per attribute, the fraction of images showing the prompt's attribute (see easel.demo.checker).
    checker: dict[str, float] | None = None
    checker_exact: dict[str, float] | None = None

    @property
    def speedup(self) -> float:
        """How many times faster the accelerated run was than the exact one."""
        return self.exact_seconds / self.seconds if self.seconds > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe values; JSON has no inf, so psnr_db null means identical (and speedup null an instant run)."""
        fields = dataclasses.asdict(self)
        fields["psnr_db"] = _json_float(self.psnr_db)
        fields["speedup"] = _json_float(self.speedup)
        return fields

    def summary(self) -> str:
        """One line for people: the metrics, both wall times and the speedup."""
        quality = "identical" if math.isinf(self.psnr_db) else f"{self.psnr_db:.1f} dB"
        line = (
            f"quality vs exact: PSNR {quality}, SSIM {self.ssim:.3f}, max |diff| {self.max_abs_diff:.3f}; "
            f"{self.seconds:.2f} s vs {self.exact_seconds:.2f} s exact ({self.speedup:.2f}x)"
        )
        if self.checker is not None and self.checker_exact is not None:
            line += "; checker " + ", ".join(
                f"{name} {value:.0%} (exact {self.checker_exact[name]:.0%})" for name, value in self.checker.items()
            )
        return line


def compare(
    output: Any,
    reference: Any,
    seconds: float,
    exact_seconds: float,
    prompts: list[str] | None = None,
    demo: bool = False,
) -> QualityReport:
    """Every metric of `output` against `reference`; with demo=True and one prompt per image, the checker's too."""
    out, ref = _pair(output, reference)
    report = QualityReport(psnr(out, ref), ssim(out, ref), max_abs_diff(out, ref), seconds, exact_seconds)
    if demo and prompts is not None:
        if len(prompts) != len(out):
            raise InvalidInputError(f"the checker needs one prompt per image, not {len(prompts)} for {len(out)}")
        report.checker = attribute_accuracy(out, prompts)
        report.checker_exact = attribute_accuracy(ref, prompts)
    return report
