"""Writing outputs: images and videos (MP4 or numbered frames), never leaving a partial file."""

import imageio.v3 as iio
import numpy as np
import torch

from easel.runtime.outputs import plan_output_paths, save_outputs, to_numpy, to_pil


def video_pixels(batch: int = 2, frames: int = 5, height: int = 24, width: int = 40) -> torch.Tensor:
    """A (B, 3, F, H, W) video in 0..1 whose frames differ."""
    ramp = torch.linspace(0, 1, frames)[None, None, :, None, None]
    return torch.rand(batch, 3, 1, height, width, generator=torch.Generator().manual_seed(0)) * 0.5 + ramp * 0.5


def test_video_conversions_put_frames_after_the_batch():
    pixels = video_pixels()
    assert to_numpy(pixels).shape == (2, 5, 24, 40, 3)
    videos = to_pil(pixels)
    assert len(videos) == 2 and len(videos[0]) == 5 and videos[0][0].size == (40, 24)


def test_mp4_has_the_frames_and_size(tmp_path):
    paths = plan_output_paths(tmp_path, 2, "a cat", 0, "mp4")
    written = save_outputs(to_pil(video_pixels()), paths, fps=8)
    assert [p.name for p in written] == ["a-cat_0_0.mp4", "a-cat_0_1.mp4"]
    frames = iio.imread(written[0])
    assert frames.shape == (5, 24, 40, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-cat_0_0.mp4", "a-cat_0_1.mp4"]  # no partial files


def test_video_as_numbered_png_frames(tmp_path):
    written = save_outputs(to_pil(video_pixels(batch=1, frames=3)), [tmp_path / "clip.png"], fps=8)
    assert [p.name for p in written] == ["clip_000.png", "clip_001.png", "clip_002.png"]
    first = np.asarray(iio.imread(written[0]))
    assert first.shape == (24, 40, 3)
