"""easel.quality: PSNR, SSIM and max |diff| against known values, every input form, and the report."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from easel import quality
from easel.demo.scenes import evaluation_prompts, parse_prompt, render
from easel.errors import InvalidInputError


def _image(seed: int = 0, shape: tuple[int, ...] = (32, 32, 3)) -> np.ndarray:
    return np.random.RandomState(seed).rand(*shape)


# --- PSNR: MSE by hand, PSNR = 10 log10(range^2 / MSE) ---


@pytest.mark.parametrize(("value", "expected"), [(0.1, 20.0), (0.01, 40.0), (0.5, 10 * math.log10(4))])
def test_psnr_of_a_constant_offset(value: float, expected: float) -> None:
    reference = np.zeros((16, 16, 3))
    assert quality.psnr(np.full_like(reference, value), reference) == pytest.approx(expected, abs=1e-9)


def test_psnr_with_a_255_data_range() -> None:
    reference = np.zeros((16, 16, 3))
    assert quality.psnr(np.full_like(reference, 25.5), reference, data_range=255) == pytest.approx(20.0, abs=1e-9)


def test_psnr_of_identical_images_is_infinite() -> None:
    image = _image()
    assert quality.psnr(image, image) == math.inf


def test_psnr_is_the_mean_of_per_frame_values() -> None:
    reference = np.zeros((2, 16, 16, 3))
    output = np.stack([np.full((16, 16, 3), 0.1), np.full((16, 16, 3), 0.01)])  # 20 dB and 40 dB
    assert quality.psnr(output, reference) == pytest.approx(30.0, abs=1e-9)
    # One identical frame makes the mean infinite, as the docstring says.
    assert quality.psnr(np.stack([output[0], reference[1]]), reference) == math.inf


# --- SSIM ---


def test_ssim_of_identical_images_is_one() -> None:
    image = _image()
    assert quality.ssim(image, image) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_scikit_image() -> None:
    # From scikit-image 0.26.0 (scipy 1.17.1, numpy 2.4.6): structural_similarity(output, reference,
    # gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1).
    reference = _image()
    noisy = np.clip(reference + 0.1 * np.random.RandomState(1).randn(32, 32, 3), 0, 1)
    shifted = np.roll(reference, 1, axis=1)
    assert quality.ssim(noisy, reference) == pytest.approx(0.946420861241292, abs=1e-6)
    assert quality.ssim(shifted, reference) == pytest.approx(-0.05096543321707777, abs=1e-6)


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    # Variances and covariance are 0, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * range)^2.
    a, b, c1 = 0.3, 0.6, 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert quality.ssim(np.full((16, 16, 3), a), np.full((16, 16, 3), b)) == pytest.approx(expected, abs=1e-12)


def test_ssim_is_symmetric_and_falls_with_noise() -> None:
    reference = _image()
    noise = np.random.RandomState(2).randn(32, 32, 3)
    values = [quality.ssim(np.clip(reference + level * noise, 0, 1), reference) for level in (0.02, 0.05, 0.1, 0.3)]
    assert values == sorted(values, reverse=True)
    noisy = np.clip(reference + 0.1 * noise, 0, 1)
    assert quality.ssim(noisy, reference) == pytest.approx(quality.ssim(reference, noisy), abs=1e-12)


# --- max |diff| and the input forms ---


def test_max_abs_diff() -> None:
    reference = np.zeros((16, 16, 3))
    output = reference.copy()
    output[3, 4, 1] = -0.25
    output[5, 6, 2] = 0.125
    assert quality.max_abs_diff(output, reference) == 0.25


def test_every_input_form_gives_the_same_numbers() -> None:
    videos = [(_image(seed, (3, 16, 16, 3)) * 255).round().astype(np.uint8) for seed in range(4)]  # 2 videos each
    output, reference = np.stack(videos[:2]), np.stack(videos[2:])  # (N, F, H, W, C) uint8
    as_float = (output / 255.0, reference / 255.0)  # what output_type="np" gives
    flattened = (as_float[0].reshape(-1, 16, 16, 3), as_float[1].reshape(-1, 16, 16, 3))
    as_pil = tuple([[Image.fromarray(frame) for frame in video] for video in side] for side in (output, reference))
    pil_frames = tuple([frame for video in side for frame in video] for side in as_pil)
    for metric in (quality.psnr, quality.ssim, quality.max_abs_diff):
        expected = metric(*as_float)
        for form in ((output, reference), flattened, as_pil, pil_frames):
            assert metric(*form) == pytest.approx(expected, abs=1e-12), (metric.__name__, type(form[0]))
    # A single PIL image against its (H, W, C) array.
    assert quality.psnr(as_pil[0][0][0], as_float[1][0, 0]) == pytest.approx(
        quality.psnr(as_float[0][0, 0], as_float[1][0, 0]), abs=1e-12
    )


def test_a_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(InvalidInputError, match=r"\(2, 16, 16, 3\) vs \(1, 16, 16, 3\)"):
        quality.psnr(np.zeros((2, 16, 16, 3)), np.zeros((16, 16, 3)))
    with pytest.raises(InvalidInputError, match="differ in shape"):
        quality.ssim(np.zeros((16, 16, 3)), np.zeros((16, 17, 3)))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="at least 11x11"):
        quality.ssim(np.zeros((10, 32, 3)), np.zeros((10, 32, 3)))
    with pytest.raises(InvalidInputError, match="empty"):
        quality.psnr([], [])
    with pytest.raises(InvalidInputError, match="cannot compare a str"):
        quality.psnr("image.png", "image.png")
    with pytest.raises(InvalidInputError, match="differ in shape"):
        quality.psnr([np.zeros((16, 16, 3)), np.zeros((8, 8, 3))], np.zeros((2, 16, 16, 3)))


# --- the report ---


def test_report_to_dict_is_json_and_summary_shows_the_speedup() -> None:
    report = quality.QualityReport(33.14, 0.9812, 0.0431, seconds=0.21, exact_seconds=0.43)
    assert report.speedup == pytest.approx(0.43 / 0.21)
    assert json.loads(json.dumps(report.to_dict()))["speedup"] == pytest.approx(0.43 / 0.21)
    assert report.summary() == (
        "quality vs exact: PSNR 33.1 dB, SSIM 0.981, max |diff| 0.043; 0.21 s vs 0.43 s exact (2.05x)"
    )
    identical = quality.QualityReport(math.inf, 1.0, 0.0, seconds=0.5, exact_seconds=0.5)
    assert json.loads(json.dumps(identical.to_dict(), allow_nan=False))["psnr_db"] is None
    assert "PSNR identical" in identical.summary() and "(1.00x)" in identical.summary()


def test_compare_with_the_demo_checker() -> None:
    prompts = evaluation_prompts(held_out=False, count=2)
    images = [Image.fromarray(render(parse_prompt(prompt))) for prompt in prompts]
    same = quality.compare(images, images, seconds=0.2, exact_seconds=0.4, prompts=prompts, demo=True)
    assert same.psnr_db == math.inf and same.ssim == pytest.approx(1.0) and same.max_abs_diff == 0.0
    assert same.checker == same.checker_exact and same.checker_exact["colour"] == 1.0
    assert "checker colour 100% (exact 100%)" in same.summary()
    json.dumps(same.to_dict(), allow_nan=False)
    # Each prompt's image swapped for the other's: the checker sees the wrong colours.
    swapped = quality.compare(images[::-1], images, seconds=0.2, exact_seconds=0.4, prompts=prompts, demo=True)
    assert swapped.checker["colour"] < swapped.checker_exact["colour"]
    assert quality.compare(images, images, 0.2, 0.4, prompts=prompts).checker is None  # demo=False: no checker
    with pytest.raises(InvalidInputError, match="one prompt per image"):
        quality.compare(images, images, 0.2, 0.4, prompts=prompts[:1], demo=True)
