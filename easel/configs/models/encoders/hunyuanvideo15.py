"""HunyuanVideo-1.5's two text encoders: Qwen2.5-VL over a system-prompted chat (its template cut off the output),
and ByT5 over the prompt's quoted text ("glyphs")."""

import dataclasses
import re

import torch

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req

# HunyuanVideo-1.5's system message, whitespace and all, as Diffusers sends it.
SYSTEM_MESSAGE = (
    "You are a helpful assistant. Describe the video by detailing the following aspects:         1. The main "
    "content and theme of the video.         2. The color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects.         3. Actions, events, behaviors temporal relationships, physical movement "
    "changes of the objects.         4. background environment, light, style and atmosphere.         5. camera "
    "angles, movements, and transitions used in the video."
)


@dataclasses.dataclass
class HunyuanVideo15QwenConfig(TextEncoderConfig):
    """The prompt as the user turn after the system message, padded to the window; the third-to-last hidden
    states, with the template's first `crop_start` tokens (in the real vocabulary) cut off, and their mask."""

    max_length: int | None = 1000  # the prompt's tokens; the template's come on top
    crop_start: int = 108
    hidden_layer: int = -3

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        system = {"role": "system", "content": SYSTEM_MESSAGE}
        chats = [[system, {"role": "user", "content": prompt or " "}] for prompt in prompts]
        tokens = tokenizer.apply_chat_template(
            chats,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            padding="max_length",
            max_length=self.max_length + self.crop_start,
            truncation=True,
            return_tensors="pt",
        )
        ids, mask = tokens["input_ids"].to(text_encoder.device), tokens["attention_mask"].to(text_encoder.device)
        states = text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return TextEncoding(embeds=states[self.hidden_layer][:, self.crop_start :], mask=mask[:, self.crop_start :])


def glyph_text(prompt: str) -> str | None:
    """The prompt's "double" or “curly” quoted texts (repeats dropped) as HunyuanVideo-1.5 shows them to ByT5."""
    texts = [double or curly for double, curly in re.findall(r"\"(.*?)\"|“(.*?)”", prompt)]
    texts = list(dict.fromkeys(texts)) if len(texts) > 1 else texts
    return ". ".join(f'Text "{text}"' for text in texts) + ". " if texts else None


@dataclasses.dataclass
class HunyuanVideo15GlyphConfig(TextEncoderConfig):
    """ByT5 over each prompt's glyph text, padded to 256 bytes; a prompt that quotes nothing gets zeros, all masked."""

    tokenizer: str = "tokenizer_2"
    text_encoder: str = "text_encoder_2"
    max_length: int | None = 256

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        embeds, masks = [], []
        for text in map(glyph_text, prompts):
            if text is None:
                width, device = text_encoder.config.d_model, text_encoder.device
                embeds.append(torch.zeros(1, self.max_length, width, device=device, dtype=text_encoder.dtype))
                masks.append(torch.zeros(1, self.max_length, dtype=torch.int64, device=text_encoder.device))
                continue
            tokens = tokenizer(
                text, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
            ).to(text_encoder.device)
            embeds.append(text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask.float())[0])
            masks.append(tokens.attention_mask)
        return TextEncoding(embeds=torch.cat(embeds), mask=torch.cat(masks))
