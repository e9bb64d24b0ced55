"""T5-family encoders: their hidden-state sequence conditions the DiT (FLUX, SD3: T5 v1.1 XXL; Wan: UMT5)."""

import dataclasses
import html
import re

import ftfy

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req


@dataclasses.dataclass
class T5Config(TextEncoderConfig):
    """The T5 encoder; its window is the request's `max_sequence_length` (512 for FLUX.1-dev)."""

    tokenizer: str = "tokenizer_2"
    text_encoder: str = "text_encoder_2"


@dataclasses.dataclass
class UMT5Config(TextEncoderConfig):
    """UMT5 as Wan uses it: the prompt cleaned, the encoder run with its mask, and the states past each prompt's
    end zeroed (the DiT attends to all of the window, padding included, as it was trained)."""

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        tokens = self.tokenize([clean_prompt(prompt) for prompt in prompts], tokenizer, batch)
        mask = tokens.attention_mask.to(text_encoder.device)
        states = text_encoder(tokens.input_ids.to(text_encoder.device), mask).last_hidden_state
        return TextEncoding(embeds=states * mask[..., None].to(states.dtype))


def clean_prompt(text: str) -> str:
    """Mojibake fixed, HTML entities unescaped (twice, as Wan's reference does), whitespace collapsed."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()
