"""Tests of `easel.testing.ltx2`: the tiny random-weight LTX-2 folders (video with audio, from text or an image)."""

import json
import pathlib

import numpy as np
import pytest
import torch
from diffusers import LTX2ImageToVideoPipeline, LTX2Pipeline
from PIL import Image

from easel.testing.ltx2 import (
    AUDIO_COMPRESSION,
    AUDIO_HOP_LENGTH,
    AUDIO_LATENT_CHANNELS,
    AUDIO_MEL_BINS,
    AUDIO_SAMPLE_RATE,
    GEMMA_END_OF_TURN,
    GEMMA_START_OF_TURN,
    LTX2_BUILDERS,
    LTX2_LATENT_CHANNELS,
    TEXT_ENCODER_HIDDEN_SIZE,
    TEXT_PROJ_IN_FACTOR,
    VOCODER_SAMPLE_RATE,
    load_ltx2_reference,
)
from tests.tiny_builders import (
    MIN_CONDITIONING_EFFECT,
    NEGATIVE_PROMPT,
    OTHER_PROMPT,
    PROMPT,
    assert_other_weights,
    assert_same_weights,
    load_reference,
    safetensors_tensors,
)

PIPELINES = {"ltx2": LTX2Pipeline, "ltx2-i2v": LTX2ImageToVideoPipeline}
# 8k + 1 frames: the causal VAE's 8x temporal compression maps them to k + 1 latent frames and back.
NUM_FRAMES = 9
# Multiples of 32 (the VAE's compression); the decoder's reflect padding needs latents of at least 2 a side.
SIZES = [(64, 64), (64, 96)]


def _image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8))


def _expected_samples(num_frames: int, frame_rate: float) -> int:
    """The waveform length `LTX2Pipeline` defines: round(frames / fps x 25) latent audio frames (16 kHz / hop 160 / 4),
    each 4 mel frames but the causal first (4L - 3), each mel frame 240 samples at 24 kHz."""
    latents_per_second = AUDIO_SAMPLE_RATE / AUDIO_HOP_LENGTH / AUDIO_COMPRESSION
    latent_frames = round(num_frames / frame_rate * latents_per_second)
    mel_frames = AUDIO_COMPRESSION * latent_frames - (AUDIO_COMPRESSION - 1)
    return mel_frames * AUDIO_HOP_LENGTH * VOCODER_SAMPLE_RATE // AUDIO_SAMPLE_RATE


@pytest.fixture(scope="module", params=list(PIPELINES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    kind = request.param
    return kind, LTX2_BUILDERS[kind](tmp_path_factory.mktemp(kind) / kind, 0)


@pytest.fixture(scope="module")
def pipeline(built: tuple[str, pathlib.Path]):
    kind, folder = built
    reference = load_reference(PIPELINES[kind], folder)
    assert type(reference) is PIPELINES[kind]
    return reference


def _generate(pipeline, height: int, width: int, **call_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(frames (F, H, W, 3) in 0..1, waveform (2, samples)) of one 2-step generation with the pipelines' default
    guidance (CFG 3 video / 7 audio against the negative prompt, modality guidance 3, rescale 0.7)."""
    request = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE_PROMPT,
        "height": height,
        "width": width,
        "num_frames": NUM_FRAMES,
        "num_inference_steps": 2,
        **call_kwargs,
    }
    if isinstance(pipeline, LTX2ImageToVideoPipeline):
        # The default re-compresses the image with H.264 (CRF 33) through PyAV, which is not installed.
        request.setdefault("image", _image(0))
        request["image_crf"] = 0
    generator = torch.Generator("cpu").manual_seed(0)
    output = pipeline(generator=generator, output_type="np", **request)
    return output.frames[0], output.audio[0].numpy()


def test_folder_has_the_diffusers_layout(built: tuple[str, pathlib.Path]) -> None:
    kind, folder = built
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == PIPELINES[kind].__name__
    assert model_index["text_encoder"] == ["transformers", "Gemma3ForConditionalGeneration"]
    assert model_index["tokenizer"] == ["transformers", "GemmaTokenizer"]
    # The connectors and the vocoder are modules of Diffusers' ltx2 pipeline package, recorded as such.
    assert model_index["connectors"] == ["ltx2", "LTX2TextConnectors"]
    assert model_index["transformer"] == ["diffusers", "LTX2VideoTransformer3DModel"]
    assert model_index["vae"] == ["diffusers", "AutoencoderKLLTX2Video"]
    assert model_index["audio_vae"] == ["diffusers", "AutoencoderKLLTX2Audio"]
    assert model_index["vocoder"] == ["ltx2", "LTX2Vocoder"]
    assert model_index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert model_index["processor"] == [None, None]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"

    def config(name: str) -> dict:
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        return json.loads((folder / name / file).read_text())

    scheduler = config("scheduler")
    assert scheduler["use_dynamic_shifting"] and scheduler["shift_terminal"] == 0.1
    assert (scheduler["base_shift"], scheduler["max_shift"]) == (0.95, 2.05)
    vae = config("vae")
    assert (vae["spatial_compression_ratio"], vae["temporal_compression_ratio"]) == (32, 8)
    assert vae["latent_channels"] == LTX2_LATENT_CHANNELS and vae["patch_size"] == 4
    audio_vae = config("audio_vae")
    assert (audio_vae["sample_rate"], audio_vae["mel_hop_length"], audio_vae["mel_bins"]) == (16000, 160, 64)
    # The audio latent statistics are sized by `base_channels`: one per packed audio token channel.
    token_channels = AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS // AUDIO_COMPRESSION
    assert audio_vae["base_channels"] == token_channels
    vocoder = config("vocoder")
    assert vocoder["output_sampling_rate"] == VOCODER_SAMPLE_RATE
    assert np.prod(vocoder["upsample_factors"]) * AUDIO_SAMPLE_RATE == AUDIO_HOP_LENGTH * VOCODER_SAMPLE_RATE
    assert vocoder["in_channels"] == audio_vae["output_channels"] * AUDIO_MEL_BINS
    transformer = config("transformer")
    assert transformer["in_channels"] == LTX2_LATENT_CHANNELS
    assert transformer["audio_in_channels"] == token_channels
    assert transformer["caption_channels"] == TEXT_ENCODER_HIDDEN_SIZE
    assert transformer["num_attention_heads"] == transformer["audio_num_attention_heads"]
    connectors = config("connectors")
    assert connectors["caption_channels"] == TEXT_ENCODER_HIDDEN_SIZE
    assert connectors["text_proj_in_factor"] == TEXT_PROJ_IN_FACTOR
    text_config = config("text_encoder")["text_config"]
    assert text_config["num_hidden_layers"] + 1 == TEXT_PROJ_IN_FACTOR
    assert text_config["hidden_size"] == TEXT_ENCODER_HIDDEN_SIZE


def test_tokenizer_and_text_encoder_are_gemma_shaped(pipeline) -> None:
    tokenizer = pipeline.tokenizer
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids([GEMMA_START_OF_TURN, GEMMA_END_OF_TURN]) == [105, 106]
    assert tokenizer.padding_side == "left"
    encoded = tokenizer(PROMPT, padding="max_length", max_length=16)
    ids = encoded.input_ids
    length = sum(encoded.attention_mask)
    assert ids[: 16 - length] == [0] * (16 - length) and ids[16 - length] == 2
    assert tokenizer.unk_token_id not in ids and length < 12, "prompt words are whole tokens"
    assert tokenizer.decode(tokenizer("voilà: 1 + 2").input_ids, skip_special_tokens=True) == "voilà: 1 + 2"
    chat = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert chat == "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n"

    # The pipelines stack every hidden state of the text encoder (embeddings + one per layer) along the width.
    embeds, mask, _, _ = pipeline.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=128)
    assert embeds.shape == (1, 128, TEXT_ENCODER_HIDDEN_SIZE * TEXT_PROJ_IN_FACTOR)
    assert mask.sum() == length


def test_runs_and_is_sensitive_to_its_conditioning(built: tuple[str, pathlib.Path], pipeline) -> None:
    kind, _ = built
    samples = _expected_samples(NUM_FRAMES, 24.0)
    for height, width in SIZES:
        frames, audio = _generate(pipeline, height, width)
        assert frames.shape == (NUM_FRAMES, height, width, 3)
        assert audio.shape == (2, samples)
        assert np.isfinite(frames).all() and np.isfinite(audio).all()
        other_frames, other_audio = _generate(pipeline, height, width, prompt=OTHER_PROMPT)
        effect, audio_effect = np.abs(frames - other_frames).max(), np.abs(audio - other_audio).max()
        print(f"{kind} {height}x{width}: prompt effect {effect:.4f}, on audio {audio_effect:.4f}")
        assert effect >= MIN_CONDITIONING_EFFECT
        assert audio_effect >= MIN_CONDITIONING_EFFECT
        if kind == "ltx2-i2v":
            image_frames, image_audio = _generate(pipeline, height, width, image=_image(1))
            image_effect, image_audio_effect = np.abs(frames - image_frames).max(), np.abs(audio - image_audio).max()
            print(f"{kind} {height}x{width}: image effect {image_effect:.4f}, on audio {image_audio_effect:.4f}")
            assert image_effect >= MIN_CONDITIONING_EFFECT


def test_waveform_lasts_as_long_as_the_video(pipeline) -> None:
    # 17 frames at 25 fps: 0.68 s, 17 latent audio frames, 65 mel frames, 15600 samples at 24 kHz.
    frames, audio = _generate(pipeline, 64, 64, num_frames=17, frame_rate=25.0)
    assert frames.shape[0] == 17
    assert audio.shape == (2, _expected_samples(17, 25.0)) == (2, 15600)


def test_load_ltx2_reference_picks_the_folders_pipeline(built: tuple[str, pathlib.Path]) -> None:
    kind, folder = built
    assert type(load_ltx2_reference(folder)) is PIPELINES[kind]


def test_i2v_folder_has_the_t2v_weights(tmp_path: pathlib.Path) -> None:
    t2v, i2v = LTX2_BUILDERS["ltx2"](tmp_path / "t2v", 0), LTX2_BUILDERS["ltx2-i2v"](tmp_path / "i2v", 0)
    assert_same_weights(t2v, i2v)
    assert json.loads((i2v / "model_index.json").read_text())["_class_name"] == "LTX2ImageToVideoPipeline"


def test_builds_deterministically(built: tuple[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    kind, folder = built
    assert_same_weights(folder, LTX2_BUILDERS[kind](tmp_path / "same", 0))
    assert_other_weights(folder, LTX2_BUILDERS[kind](tmp_path / "other", 1))
    # Every component draws its own weights (from its own seed).
    tensors = safetensors_tensors(folder)
    assert {name.split("/")[0] for name in tensors} == {
        "text_encoder",
        "connectors",
        "transformer",
        "vae",
        "audio_vae",
        "vocoder",
    }
