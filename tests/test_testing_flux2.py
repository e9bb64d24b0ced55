"""Tests of `easel.testing.flux2`: the tiny random-weight FLUX.2-dev and FLUX.2-klein folders, built offline."""

import json
import pathlib

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import format_input
from PIL import Image
from safetensors.torch import load_file
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from easel.testing import TINY_PIPELINE_BUILDERS
from easel.testing.flux2 import (
    FLUX2_BUILDERS,
    FLUX2_MAX_SEQUENCE_LENGTH,
    MISTRAL_HIDDEN_STATES_LAYERS,
    NUM_STACKED_TEXT_LAYERS,
    QWEN3_HIDDEN_STATES_LAYERS,
    load_flux2_reference,
    load_flux2_tokenizer,
)
from tests.parity import reference_images
from tests.tiny_builders import (
    MIN_CONDITIONING_EFFECT,
    OTHER_PROMPT,
    PROMPT,
    assert_other_weights,
    assert_same_weights,
    load_reference,
)

KINDS = list(FLUX2_BUILDERS)
PIPELINES = {"flux2": Flux2Pipeline, "flux2-klein": Flux2KleinPipeline, "flux2-klein-base": Flux2KleinPipeline}
TEXT_ENCODERS = {
    "flux2": "Mistral3ForConditionalGeneration",
    "flux2-klein": "Qwen3ForCausalLM",
    "flux2-klein-base": "Qwen3ForCausalLM",
}
STACKED_LAYERS = {
    "flux2": MISTRAL_HIDDEN_STATES_LAYERS,
    "flux2-klein": QWEN3_HIDDEN_STATES_LAYERS,
    "flux2-klein-base": QWEN3_HIDDEN_STATES_LAYERS,
}


def _image(seed: int, height: int = 64, width: int = 64) -> Image.Image:
    """A noise image; FLUX.2 accepts reference images of at least 64 pixels a side."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=KINDS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    kind = request.param
    return kind, FLUX2_BUILDERS[kind](tmp_path_factory.mktemp(kind) / kind, 0)


@pytest.fixture(scope="module")
def pipeline(built: tuple[str, pathlib.Path]):
    kind, folder = built
    if kind == "flux2":
        # model_index.json names PixtralProcessor, which needs torchvision: Diffusers loads the rest and the tokenizer
        # of tokenizer/ is attached, as `load_flux2_reference` does.
        reference = load_reference(Flux2Pipeline, folder, tokenizer=None)
        reference.tokenizer = load_flux2_tokenizer(folder / "tokenizer")
    else:
        reference = load_reference(PIPELINES[kind], folder)
    assert type(reference) is PIPELINES[kind]
    return reference


def _generate(pipeline, height: int = 64, width: int = 64, **call_kwargs) -> np.ndarray:
    # guidance_scale 4 (the pipelines' default) is embedded by dev, gives CFG to klein-base, is ignored by klein.
    request = {"prompt": PROMPT, "guidance_scale": 4.0, "num_inference_steps": 2, **call_kwargs}
    return reference_images(pipeline, 0, height=height, width=width, **request)


def test_kinds_are_registered() -> None:
    assert all(TINY_PIPELINE_BUILDERS[kind] is FLUX2_BUILDERS[kind] for kind in KINDS)


def test_folder_has_the_diffusers_layout(built: tuple[str, pathlib.Path], pipeline) -> None:
    kind, folder = built
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == PIPELINES[kind].__name__
    assert model_index["text_encoder"] == ["transformers", TEXT_ENCODERS[kind]]
    assert model_index["transformer"] == ["diffusers", "Flux2Transformer2DModel"]
    assert model_index["vae"] == ["diffusers", "AutoencoderKLFlux2"]
    assert model_index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    assert sum(file.stat().st_size for file in folder.rglob("*") if file.is_file()) < 32e6

    # The stacked hidden states are intermediate layers (the last one comes after the final norm), side by side.
    text_config = pipeline.text_encoder.config.get_text_config()
    assert text_config.num_hidden_layers > max(STACKED_LAYERS[kind])
    transformer = pipeline.transformer.config
    assert transformer.joint_attention_dim == NUM_STACKED_TEXT_LAYERS * text_config.hidden_size
    assert text_config.vocab_size >= len(pipeline.tokenizer)

    # FLUX.2's VAE: 8x compression, 32 latent channels packed 2x2 into the transformer's 128, batch-norm statistics
    # that are not the identity.
    vae = pipeline.vae
    assert pipeline.vae_scale_factor == 8 and vae.config.latent_channels == 32
    assert transformer.in_channels == vae.bn.num_features == 4 * vae.config.latent_channels == 128
    assert vae.bn.running_mean.abs().min() > 0 and (vae.bn.running_var - 1).abs().max() > 0.5
    assert vae.config.use_quant_conv and vae.config.use_post_quant_conv
    # The pipelines pass their own mu: the scheduler must shift dynamically.
    assert pipeline.scheduler.config.use_dynamic_shifting
    assert pipeline.scheduler.config.time_shift_type == "exponential"
    assert sum(transformer.axes_dims_rope) == transformer.attention_head_dim and len(transformer.axes_dims_rope) == 4

    if kind == "flux2":
        assert model_index["tokenizer"] == ["transformers", "PixtralProcessor"]
        assert transformer.guidance_embeds
        assert "is_distilled" not in model_index
        processor = json.loads((folder / "tokenizer" / "processor_config.json").read_text())
        assert processor["processor_class"] == "PixtralProcessor" and processor["spatial_merge_size"] == 2
        assert processor["patch_size"] == pipeline.text_encoder.config.vision_config.patch_size == 14
        image_processor = PixtralImageProcessorPil.from_pretrained(folder / "tokenizer")
        assert image_processor.size["longest_edge"] == 1540
        assert (folder / "tokenizer" / "chat_template.jinja").is_file()
    else:
        assert model_index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
        assert not transformer.guidance_embeds
        assert model_index["is_distilled"] is (kind == "flux2-klein")


@pytest.mark.parametrize("built", ["flux2"], indirect=True)
def test_mistral_tokenizer_renders_flux2_prompts(built: tuple[str, pathlib.Path], pipeline) -> None:
    tokenizer = pipeline.tokenizer  # loaded from the folder's tokenizer/
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "<pad>"]) == [
        0,
        1,
        2,
        3,
        4,
        10,
        11,
    ]
    assert tokenizer.convert_tokens_to_ids(["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]) == [17, 18]
    assert (tokenizer.pad_token_id, tokenizer.padding_side) == (11, "left")

    # As Flux2Pipeline._get_mistral_3_small_prompt_embeds calls it.
    messages = format_input([OTHER_PROMPT])
    text = tokenizer.apply_chat_template(messages[0], tokenize=False)
    assert text.startswith("<s>[SYSTEM_PROMPT]You are an AI that reasons about image descriptions.")
    assert text.endswith("[/SYSTEM_PROMPT][INST]a cat[/INST]")
    inputs = tokenizer.apply_chat_template(
        messages,
        add_generation_prompt=False,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=FLUX2_MAX_SEQUENCE_LENGTH,
    )
    ids, mask = inputs["input_ids"][0], inputs["attention_mask"][0]
    length = int(mask.sum())
    assert ids.shape == (FLUX2_MAX_SEQUENCE_LENGTH,) and length < 64  # the system prompt's words are tokens
    assert (ids[:-length] == 11).all() and not mask[:-length].any()  # padded on the left
    assert ids[-length:][:2].tolist() == [1, 17] and ids[-1] == 4
    assert tokenizer.decode(ids[-length:], skip_special_tokens=True).endswith("speculation.a cat")
    # An image block renders as [IMG], which the processor would expand to the image's patch tokens.
    image_message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": OTHER_PROMPT}]}]
    assert tokenizer.apply_chat_template(image_message, tokenize=False) == "<s>[INST][IMG]a cat[/INST]"


@pytest.mark.parametrize("built", ["flux2-klein"], indirect=True)
def test_klein_tokenizer_is_the_real_qwen3_one(built: tuple[str, pathlib.Path], pipeline) -> None:
    tokenizer = pipeline.tokenizer
    assert tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert (tokenizer.pad_token, tokenizer.padding_side) == ("<|endoftext|>", "right")
    # As Flux2KleinPipeline._get_qwen3_prompt_embeds calls it.
    messages = [{"role": "user", "content": OTHER_PROMPT}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_runs_and_depends_on_the_prompt(built: tuple[str, pathlib.Path], pipeline) -> None:
    kind, _ = built
    for height, width in [(64, 64), (48, 80)]:
        image = _generate(pipeline, height, width)
        assert image.shape == (1, height, width, 3)
        assert np.isfinite(image).all() and image.std() > 0.05
        np.testing.assert_array_equal(_generate(pipeline, height, width), image)
        effect = np.abs(_generate(pipeline, height, width, prompt=OTHER_PROMPT) - image).max()
        print(f"{kind} {height}x{width}: prompt effect {effect:.4f}")
        assert effect >= MIN_CONDITIONING_EFFECT


def test_guidance(built: tuple[str, pathlib.Path], pipeline) -> None:
    """Dev embeds the guidance scale; klein-base runs CFG above 1; the distilled klein ignores it."""
    kind, _ = built
    effect = np.abs(_generate(pipeline, guidance_scale=1.0) - _generate(pipeline, guidance_scale=4.0)).max()
    print(f"{kind}: guidance effect {effect:.4f}")
    if kind == "flux2-klein":
        assert effect == 0
    else:
        assert effect >= MIN_CONDITIONING_EFFECT


def test_reference_images_condition_the_output(built: tuple[str, pathlib.Path], pipeline) -> None:
    kind, _ = built
    plain = _generate(pipeline)
    one = _generate(pipeline, image=_image(0))
    assert one.shape == plain.shape and np.isfinite(one).all()
    assert np.abs(one - plain).max() >= MIN_CONDITIONING_EFFECT
    other = np.abs(_generate(pipeline, image=_image(1)) - one).max()
    # Two references, the second not a multiple of 16 (center-cropped to 64x96); at 48x80 the output size is given.
    two = _generate(pipeline, 48, 80, image=[_image(0), _image(2, 72, 100)])
    assert two.shape == (1, 48, 80, 3) and np.isfinite(two).all()
    other_second = np.abs(_generate(pipeline, 48, 80, image=[_image(0), _image(3, 72, 100)]) - two).max()
    print(f"{kind}: reference image effect {other:.4f}, second reference {other_second:.4f}")
    assert other >= MIN_CONDITIONING_EFFECT and other_second >= MIN_CONDITIONING_EFFECT


def test_build_is_deterministic_and_seeded(built: tuple[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    kind, folder = built
    again = FLUX2_BUILDERS[kind](tmp_path / "again", 0)
    assert_same_weights(folder, again)
    tokenizer_file = pathlib.Path("tokenizer") / "tokenizer.json"
    assert (again / tokenizer_file).read_bytes() == (folder / tokenizer_file).read_bytes()
    assert_other_weights(folder, FLUX2_BUILDERS[kind](tmp_path / "other", 1))
    # The batch-norm statistics are drawn from the build's seed as well.
    first, other = (
        load_file(path / "vae" / "diffusion_pytorch_model.safetensors") for path in (folder, tmp_path / "other")
    )
    assert not torch.equal(first["bn.running_mean"], other["bn.running_mean"])


def test_load_flux2_reference(built: tuple[str, pathlib.Path]) -> None:
    kind, folder = built
    reference = load_flux2_reference(folder)
    assert type(reference) is PIPELINES[kind]
    assert reference.tokenizer.chat_template is not None
