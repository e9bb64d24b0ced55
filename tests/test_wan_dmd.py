"""Few-step distilled Wan: `DmdDenoisingStage` and `CausalDMDDenoisingStage` against reference loops written here.

Each reference follows the definition with the same weights, prompt embeddings, initial noise and generator state as
the Easel run: a DMD step predicts x0 = x - sigma * v and noises it again to the next sigma; the causal reference runs
the whole video so far (earlier blocks clean at timestep 0, the current block noisy) through the plain Wan forward
with an explicit block-causal mask, where Easel runs one block over its KV cache. Every comparison is paired with a
broken reference (no re-noise, a shifted rotary, a wrong cache window) that must miss by at least ten times the
tolerance, so none of them can pass by accident.
"""

import dataclasses

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from easel import DiffGenerator
from easel.cli.main import main
from easel.errors import InvalidInputError
from easel.registry import resolve_model_family
from easel.runtime.distributed import ParallelLayout, init_distributed
from easel.runtime.distributed.cfg_parallel import run_passes
from easel.runtime.distributed.launch import run_on_ranks
from tests.parity import input_image, mirrored

TOLERANCE = 1e-5
# 33 frames of 32x48: 9 latent frames of 4x6, 6 tokens each; self-forcing's blocks of 3 make 3 blocks.
VIDEO = {"prompt": "a red circle", "height": 32, "width": 48, "num_frames": 33, "seed": 3}


@dataclasses.dataclass
class Started:
    """An Easel run's inputs, taken before its first step, and its final latents."""

    noise: torch.Tensor  # (1, C, F, h, w): the initial latents (frame 0 the image's, for image-to-video)
    embeds: torch.Tensor  # (1, T, D) prompt embeddings
    generator: torch.Generator  # in the state the run's first step finds it
    timesteps: list[float]
    sigmas: list[float]
    latents: torch.Tensor  # after the run
    max_cached_tokens: int


def run_easel(generator: DiffGenerator, **request) -> Started:
    """Steps the request's denoising loop to the end, as `generate` would, keeping what the reference needs."""
    (started,) = generator.start_many([{**VIDEO, **request, "output_type": "latent"}])
    run = started.run
    batch = run.batch
    reference_generator = torch.Generator().set_state(batch.generator.get_state())
    noise, embeds = run.latents.clone(), batch.prompt_embeds[0].clone()
    max_cached = 0
    with torch.inference_mode():
        while not run.done:
            run.advance(run_passes(run.predict, run.passes()))
            if hasattr(run, "kv_cache"):
                max_cached = max(max_cached, run.kv_cache.tokens)
    latents = run.finish().latents
    timesteps = [float(t) for t in batch.timesteps]
    return Started(noise, embeds, reference_generator, timesteps, list(batch.sigmas), latents, max_cached)


def shifted_sigma(t: float, shift: float) -> float:
    """The sigma of the 1000-step flow-matching table shifted by `shift` whose timestep is nearest to t."""
    s = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000
    table = shift * s / (1 + (shift - 1) * s)
    return float(table[(table * 1000 - t).abs().argmin()])


def dmd_reference_step(x, velocity, sigma, next_sigma, generator, renoise=True):
    x0 = x - sigma * velocity
    if next_sigma == 0:
        return x0
    noise = torch.randn(x0.shape, generator=generator)
    return (1 - next_sigma) * x0 + next_sigma * noise if renoise else x0


def plain_forward(model, x, t, embeds, freqs, mask=None):
    """The Wan DiT over latents x (1, C, f, h, w) at timestep(s) t, optionally with a (1, L, L) self-attention mask."""
    stack = model.embed(x, t, embeds, freqs)
    stack.attn_mask = mask
    model.run_blocks(stack, 0, model.num_blocks)
    return model.finish(stack).float()


def rotary(model, frames, latents):
    _, _, _, h, w = latents.shape
    return model.rotary_emb(frames, h, w)


def dmd_reference(model, inputs: Started, timesteps, sigmas, renoise=True):
    x = inputs.noise.clone()
    freqs = rotary(model, x.shape[2], x)
    for i, t in enumerate(timesteps):
        velocity = plain_forward(model, x, torch.tensor([t]), inputs.embeds, freqs)
        x = dmd_reference_step(x, velocity, sigmas[i], sigmas[i + 1], inputs.generator, renoise)
    return x


def causal_reference(model, inputs: Started, blocks, tokens_per_frame, window=None, rotary_restart=False, image=False):
    """Block after block over the video so far, the plain forward with a block-causal mask (a query sees its own
    block and the earlier ones, at most the latest `window` frames of them, its own block's included).
    `rotary_restart` gives each block the positions of the video's first frames: the broken variant."""
    x = inputs.noise.clone()
    timesteps, sigmas = inputs.timesteps, inputs.sigmas
    ends = torch.tensor([start + size for start, size in blocks])
    first = 1 if image else 0
    for block in range(first, len(blocks)):
        start, size = blocks[block]
        end = start + size
        frame_block = torch.bucketize(torch.arange(end), ends, right=True)  # the block of each frame
        query_end = ends[frame_block].repeat_interleave(tokens_per_frame)  # (L,): each token's block end, in frames
        key_frame = torch.arange(end).repeat_interleave(tokens_per_frame)
        mask = key_frame[None, :] < query_end[:, None]
        if window is not None:
            mask &= key_frame[None, :] >= query_end[:, None] - window
        freqs = rotary(model, end, x)
        if rotary_restart:
            rows = slice(start * tokens_per_frame, end * tokens_per_frame)
            freqs = tuple(torch.cat([table[: rows.start], table[: rows.stop - rows.start]]) for table in freqs)
        for i, t in enumerate(timesteps):
            per_token = torch.where(key_frame >= start, t, 0.0)[None]  # earlier frames are clean
            velocity = plain_forward(model, x[:, :, :end], per_token, inputs.embeds, freqs, mask[None])
            x[:, :, start:end] = dmd_reference_step(
                x[:, :, start:end], velocity[:, :, start:end], sigmas[i], sigmas[i + 1], inputs.generator
            )
    return x


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def fork(inputs: Started) -> Started:
    """The same inputs with a generator of its own, for a second reference from the same state."""
    return dataclasses.replace(inputs, generator=torch.Generator().set_state(inputs.generator.get_state()))


@pytest.fixture(scope="module")
def fastwan(tiny_pipeline):
    return DiffGenerator.from_pretrained(tiny_pipeline("fastwan"), progress_bar=False)


@pytest.fixture
def causal(tiny_pipeline):
    """A self-forcing generator whose config a test may change."""
    return DiffGenerator.from_pretrained(tiny_pipeline("wan-causal"), progress_bar=False)


def transformer(generator: DiffGenerator):
    return generator.pipeline.get_module("transformer")


def test_dmd_stage_equals_the_reference_loop(fastwan):
    run = run_easel(fastwan)
    steps = (1000, 757, 522)
    assert run.timesteps == list(steps)
    sigmas = [shifted_sigma(t, 8.0) for t in steps] + [0.0]
    assert run.sigmas == pytest.approx(sigmas, abs=1e-6)
    with torch.no_grad():
        expected = dmd_reference(transformer(fastwan), fork(run), steps, sigmas)
        without_renoise = dmd_reference(transformer(fastwan), fork(run), steps, sigmas, renoise=False)
    assert max_diff(run.latents, expected) <= TOLERANCE
    assert max_diff(run.latents, without_renoise) >= 10 * TOLERANCE


def test_cached_causal_generation_equals_the_masked_reference(causal):
    run = run_easel(causal)
    # Self-forcing's warped steps: t becomes the shift-5 table's timestep at 1000 - t.
    warped = [1000 * 5 * (t / 1000) / (1 + 4 * t / 1000) for t in (1000, 750, 500, 250)]
    assert run.timesteps == pytest.approx(warped, abs=1e-3)
    blocks, tokens_per_frame = [(0, 3), (3, 3), (6, 3)], 6
    with torch.no_grad():
        expected = causal_reference(transformer(causal), fork(run), blocks, tokens_per_frame)
        wrong_rotary = causal_reference(transformer(causal), fork(run), blocks, tokens_per_frame, rotary_restart=True)
        no_cache = causal_reference(transformer(causal), fork(run), blocks, tokens_per_frame, window=3)
    assert max_diff(run.latents, expected) <= TOLERANCE
    assert max_diff(run.latents, wrong_rotary) >= 10 * TOLERANCE
    assert max_diff(run.latents, no_cache) >= 10 * TOLERANCE  # a block seeing only itself
    assert run.max_cached_tokens == 6 * tokens_per_frame  # the last block's forwards see two blocks' keys


def test_one_block_of_every_frame_equals_the_dmd_stage(causal, fastwan):
    config = causal.server_args.pipeline_config
    config.num_frames_per_block = 9
    one_block = run_easel(causal)
    dmd_config = fastwan.server_args.pipeline_config
    saved = (dmd_config.dmd_denoising_steps, dmd_config.flow_shift, dmd_config.warp_denoising_step)
    dmd_config.dmd_denoising_steps, dmd_config.flow_shift, dmd_config.warp_denoising_step = (
        config.dmd_denoising_steps,
        config.flow_shift,
        config.warp_denoising_step,
    )
    try:
        dmd = run_easel(fastwan)
    finally:
        dmd_config.dmd_denoising_steps, dmd_config.flow_shift, dmd_config.warp_denoising_step = saved
    assert max_diff(one_block.latents, dmd.latents) <= TOLERANCE
    config.num_frames_per_block = 3
    assert max_diff(run_easel(causal).latents, dmd.latents) >= 10 * TOLERANCE


def test_sliding_window_bounds_the_cache_and_matches_its_reference(causal):
    causal.server_args.pipeline_config.local_attn_size = 4  # a block of 3 sees the frame before it
    run = run_easel(causal)
    blocks, tokens_per_frame = [(0, 3), (3, 3), (6, 3)], 6
    assert run.max_cached_tokens == 4 * tokens_per_frame
    with torch.no_grad():
        expected = causal_reference(transformer(causal), fork(run), blocks, tokens_per_frame, window=4)
        unbounded = causal_reference(transformer(causal), fork(run), blocks, tokens_per_frame)
    assert max_diff(run.latents, expected) <= TOLERANCE
    assert max_diff(run.latents, unbounded) >= 10 * TOLERANCE


def test_image_to_video_prefills_the_cache_with_the_image(causal):
    # 25 frames: the image's latent frame, then 2 blocks of 3.
    with_image = run_easel(causal, image=input_image(32, 48), num_frames=25)
    other_image = run_easel(causal, image=mirrored(input_image(32, 48)), num_frames=25)
    blocks, tokens_per_frame = [(0, 1), (1, 3), (4, 3)], 6
    with torch.no_grad():
        expected = causal_reference(transformer(causal), fork(with_image), blocks, tokens_per_frame, image=True)
    assert max_diff(with_image.latents, expected) <= TOLERANCE
    assert max_diff(with_image.latents[:, :, :1], with_image.noise[:, :, :1]) == 0  # the image frame stays
    first_block = slice(1, 4)
    assert max_diff(with_image.latents[:, :, first_block], other_image.latents[:, :, first_block]) >= 10 * TOLERANCE


def test_streaming_yields_the_blocks_in_order_and_they_join_into_the_video(causal):
    request = {**VIDEO, "output_type": "np"}
    whole = causal.generate(**request).frames  # (1, 33, 32, 48, 3)
    blocks = [block.frames for block in causal.generate_stream(**request)]
    # The VAE decodes the first latent frame to one frame and each later one to four.
    assert [block.shape[1] for block in blocks] == [9, 12, 12]
    joined = np.concatenate(blocks, axis=1)
    assert joined.shape == whole.shape and np.abs(joined - whole).max() <= TOLERANCE
    # In order: the same blocks in another order would not make the video.
    assert np.abs(np.concatenate(blocks[::-1], axis=1) - whole).max() >= 10 * TOLERANCE
    pil_blocks = [block.frames for block in causal.generate_stream(**{**VIDEO, "output_type": "pil"})]
    assert [len(block[0]) for block in pil_blocks] == [9, 12, 12] and pil_blocks[0][0][0].size == (48, 32)


def test_streaming_needs_a_block_causal_model(fastwan):
    with pytest.raises(InvalidInputError, match="does not make its videos in blocks"):
        next(fastwan.generate_stream(**VIDEO))


def test_streaming_writes_the_mp4_as_the_blocks_come_and_nothing_if_stopped(causal, tmp_path):
    target = tmp_path / "clip.mp4"
    stream = causal.generate_stream(**VIDEO, output_path=str(target))
    first = next(stream)
    assert first.first_frame == 0 and first.paths == [target]
    assert not target.exists()  # the frames so far go to a hidden partial file
    stream.close()  # the caller stops listening: the partial file goes
    assert list(tmp_path.iterdir()) == []
    blocks = list(causal.generate_stream(**VIDEO, output_path=str(target)))
    assert [block.first_frame for block in blocks] == [0, 9, 21]
    assert iio.imread(target).shape == (33, 32, 48, 3)


def test_cli_writes_both_kinds_as_mp4(tiny_pipeline, tmp_path, caplog, capsys):
    for kind in ("fastwan", "wan-causal"):
        target = tmp_path / f"{kind}.mp4"
        args = ["generate", "--model-path", str(tiny_pipeline(kind)), "--prompt", "a red circle", "--seed", "1"]
        args += ["--height", "32", "--width", "48", "--num-frames", "30", "--output-path", str(target)]
        assert main(args) == 0
        assert iio.imread(target).shape[1:] == (32, 48, 3)
    assert iio.imread(tmp_path / "fastwan.mp4").shape[0] == 29  # 4k + 1
    # Self-forcing: 29 frames are 8 latent frames, whole blocks of 3 make 6, 21 frames.
    assert iio.imread(tmp_path / "wan-causal.mp4").shape[0] == 21
    assert "are not whole blocks of 3 latent frames" in caplog.text
    assert "first block" in capsys.readouterr().out


def _causal_on_ranks(path: str) -> tuple[torch.Tensor, str]:
    """On every rank: the latents under Ulysses 2, then what a ring layout answers."""
    generator = DiffGenerator.from_pretrained(path, progress_bar=False)
    latents = generator.generate(**VIDEO, output_type="latent").images
    init_distributed(ParallelLayout(ring=2))  # the world stays; only its groups change
    try:
        generator.generate(**VIDEO, output_type="latent")
        ring = "ran"
    except InvalidInputError as error:
        ring = str(error)
    return latents, ring


def test_the_cache_serves_ulysses_sequence_parallelism(tiny_pipeline, causal):
    single = causal.generate(**VIDEO, output_type="latent").images
    ranks = run_on_ranks(_causal_on_ranks, ParallelLayout(ulysses=2), str(tiny_pipeline("wan-causal")))
    for latents, ring in ranks:
        assert max_diff(latents, single) <= TOLERANCE
        assert "runs under Ulysses sequence parallelism only" in ring


def test_generate_hands_each_block_to_its_callback(causal):
    blocks = []
    whole = causal.generate(**VIDEO, output_type="np", block_callback=blocks.append).frames
    assert [block.first_frame for block in blocks] == [0, 9, 21]
    assert np.abs(np.concatenate([block.frames for block in blocks], axis=1) - whole).max() <= TOLERANCE


@pytest.mark.parametrize(
    ("folder_name", "index", "family"),
    [
        ("FastWan2.1-T2V-1.3B-Diffusers", {"_class_name": "WanDMDPipeline"}, "fastwan"),
        ("FastWan2.2-TI2V-5B-FullAttn-Diffusers", {"_class_name": "WanDMDPipeline"}, "fastwan2.2-ti2v"),
        ("my-fastwan", {"_class_name": "WanDMDPipeline"}, "fastwan"),
        ("my-fastwan-5b", {"_class_name": "WanDMDPipeline", "expand_timesteps": True}, "fastwan2.2-ti2v"),
        ("my-self-forcing", {"_class_name": "WanCausalDMDPipeline"}, "wan-causal"),
    ],
)
def test_families_resolve_by_folder_name_and_model_index(tmp_path, folder_name, index, family):
    assert resolve_model_family(tmp_path / folder_name, index).name == family


@pytest.mark.parametrize(
    ("hf_id", "family"),
    [
        ("FastVideo/FastWan2.1-T2V-1.3B-Diffusers", "fastwan"),
        ("FastVideo/FastWan2.2-TI2V-5B-Diffusers", "fastwan2.2-ti2v"),
        ("wlsaidhi/SFWan2.1-T2V-1.3B-Diffusers", "wan-causal"),
    ],
)
def test_families_resolve_by_hf_id(tmp_path, hf_id, family):
    assert resolve_model_family(tmp_path / "snapshot", {"_class_name": "WanDMDPipeline"}, hf_id).name == family


def test_guidance_and_step_count_do_not_apply(fastwan, caplog):
    plain = fastwan.generate(**VIDEO, output_type="latent").images
    guided = fastwan.generate(**VIDEO, output_type="latent", guidance_scale=5.0, num_inference_steps=30).images
    assert torch.equal(plain, guided)
    assert (
        "this DMD model runs its fixed 3 steps [1000, 757, 522]: num_inference_steps 30 does not apply" in caplog.text
    )


def test_an_independent_first_frame_is_a_block_of_its_own(causal):
    causal.server_args.pipeline_config.independent_first_frame = True
    run = run_easel(causal, num_frames=25)  # 7 latent frames: the first alone, then 2 blocks of 3
    blocks, tokens_per_frame = [(0, 1), (1, 3), (4, 3)], 6
    with torch.no_grad():
        expected = causal_reference(transformer(causal), fork(run), blocks, tokens_per_frame)
        as_threes = causal_reference(transformer(causal), fork(run), [(0, 3), (3, 3), (6, 1)], tokens_per_frame)
    assert max_diff(run.latents, expected) <= TOLERANCE
    assert max_diff(run.latents, as_threes) >= 10 * TOLERANCE
