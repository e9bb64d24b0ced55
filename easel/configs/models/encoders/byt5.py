"""ByT5 as GLM-Image's glyph encoder: the text the prompt quotes, byte by byte, each quote's tokens kept unpadded."""

import dataclasses
import re
from typing import ClassVar

import torch

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req

# The quotes GLM-Image renders as text: 'single', “curly”, "double" and 「corner」, collected in that order.
QUOTED = (r"'([^']*)'", r"\u201c([^\u201c\u201d]*)\u201d", r'"([^"]*)"', r"「([^「」]*)」")


def quoted_texts(prompt: str) -> list[str]:
    """What the prompt asks to be written in the image; [""] when it quotes nothing."""
    return [text for pattern in QUOTED for text in re.findall(pattern, prompt)] or [""]


@dataclasses.dataclass
class GlyphTextConfig(TextEncoderConfig):
    """Each quoted text through ByT5; a prompt's embedding is its texts' real (unpadded) tokens one after another,
    prompts left-padded with zeros to the longest. As in Diffusers, an even number of texts gets one pad token in
    front of each (its `(len + 1) % 2`)."""

    max_length: int | None = 2048
    fixed_window: ClassVar[bool] = False  # the length follows the prompts' texts

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        embeds = [self._encode_one(quoted_texts(prompt), tokenizer, text_encoder) for prompt in prompts]
        length = max(e.shape[0] for e in embeds)
        padded = [torch.cat([e.new_zeros(length - e.shape[0], e.shape[1]), e]) for e in embeds]
        return TextEncoding(embeds=torch.stack(padded))  # (B, T, D)

    def _encode_one(self, texts: list[str], tokenizer, text_encoder) -> torch.Tensor:
        ids = tokenizer(texts, max_length=self.max_length, truncation=True).input_ids
        ids = [[tokenizer.pad_token_id] * ((len(ids) + 1) % 2) + row for row in ids]
        longest = max(len(row) for row in ids)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids], device=text_encoder.device)
        ids = torch.tensor([row + [tokenizer.pad_token_id] * (longest - len(row)) for row in ids], device=mask.device)
        states = text_encoder(ids, attention_mask=mask).last_hidden_state  # (texts, longest, D)
        return states[mask.bool()]  # (real tokens, D)
