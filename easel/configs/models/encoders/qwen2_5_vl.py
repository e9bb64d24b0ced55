"""Qwen2.5-VL as Qwen-Image's text encoder: a system-prompt template whose own tokens are dropped from the output.

The edit models also show it the input images: their tokens sit in the user turn, before the prompt, and are kept.
"""

import dataclasses
import math

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req

QWEN_IMAGE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


@dataclasses.dataclass
class QwenVLTextConfig(TextEncoderConfig):
    """The last hidden states of the prompt's tokens only: the template's first `drop_tokens` are cut off."""

    fixed_window = False  # prompts are padded to the longest encoded with them

    template: str = QWEN_IMAGE_TEMPLATE
    drop_tokens: int = 34  # the template's tokens before the prompt, in the real Qwen vocabulary
    max_length: int | None = 1024  # prompt tokens the tokenizer keeps (the template's come on top)

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        texts = [self.template.format(prompt) for prompt in prompts]
        tokens = tokenizer(
            texts, max_length=self.max_length + self.drop_tokens, padding=True, truncation=True, return_tensors="pt"
        ).to(text_encoder.device)
        hidden = text_encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states[-1]
        per_prompt = [
            states[keep.bool()][self.drop_tokens :] for states, keep in zip(hidden, tokens.attention_mask, strict=True)
        ]
        return self.pad(per_prompt, batch.max_sequence_length)

    @staticmethod
    def pad(per_prompt: list[torch.Tensor], max_length: int | None) -> TextEncoding:
        """Right-pads each prompt's (T_i, D) states to the longest, cut to `max_length` tokens (None: no cut); the
        mask is dropped when every token is real (the DiT then attends to all, as Diffusers does)."""
        length = max(len(states) for states in per_prompt)
        embeds = torch.stack([torch.cat([s, s.new_zeros(length - len(s), s.shape[1])]) for s in per_prompt])
        mask = torch.stack([torch.arange(length, device=embeds.device) < len(s) for s in per_prompt]).long()
        embeds, mask = embeds[:, :max_length], mask[:, :max_length]
        return TextEncoding(embeds=embeds, mask=None if mask.all() else mask)


# Qwen-Image-Edit's system prompt; the input images' tokens open the user turn, before the prompt.
QWEN_IMAGE_EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where appropriate."
    "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
VISION_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"  # the processor expands the pad to the image's tokens


def area_dimensions(area: int, image: Image.Image) -> tuple[int, int]:
    """(width, height), multiples of 32, of about `area` pixels at the image's aspect ratio (Diffusers'
    `calculate_dimensions` of the Qwen-Image edit pipelines)."""
    ratio = image.width / image.height
    width = math.sqrt(area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


@dataclasses.dataclass
class QwenVLEditTextConfig(QwenVLTextConfig):
    """Qwen-Image-Edit: the prompt encoded together with the request's input image, through the Qwen2.5-VL
    processor (the module `tokenizer` names). Each image is first resized to about `image_area` pixels; its tokens,
    after the template's dropped preamble, stay in the embeddings, which are therefore not cut to any length."""

    tokenizer: str = "processor"
    template: str = QWEN_IMAGE_EDIT_TEMPLATE
    drop_tokens: int = 64
    image_area: int = 1024 * 1024
    image_prompt: str = VISION_TOKENS  # put before the prompt once per image; `{}` takes the image's number (1..)

    def encode(self, prompts: list[str], processor, text_encoder, batch: Req) -> TextEncoding:
        images = [self.resize(image) for image in batch.condition_images]
        images_prompt = "".join(self.image_prompt.format(number) for number in range(1, len(images) + 1))
        texts = [self.template.format(images_prompt + prompt) for prompt in prompts]
        # Every prompt shows the images again (Diffusers' edit pipelines take one prompt at a time).
        inputs = processor(text=texts, images=images * len(prompts) or None, padding=True, return_tensors="pt")
        inputs = inputs.to(text_encoder.device)
        hidden = text_encoder(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            output_hidden_states=True,
        ).hidden_states[-1]
        per_prompt = [
            states[keep.bool()][self.drop_tokens :] for states, keep in zip(hidden, inputs.attention_mask, strict=True)
        ]
        return self.pad(per_prompt, max_length=None)

    def resize(self, image: Image.Image) -> Image.Image:
        """The image at about `image_area` pixels, as Diffusers' `VaeImageProcessor.resize` makes it (Lanczos); the
        processor then fits it into its own pixel budget."""
        width, height = area_dimensions(self.image_area, image)
        return VaeImageProcessor().resize(image, height, width)


@dataclasses.dataclass
class QwenVLEditPlusTextConfig(QwenVLEditTextConfig):
    """Qwen-Image-Edit-2509 / -2511: several input images, each named ("Picture 1: ...") and seen at about 384x384."""

    image_area: int = 384 * 384
    image_prompt: str = "Picture {}: " + VISION_TOKENS
