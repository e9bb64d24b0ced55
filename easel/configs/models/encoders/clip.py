"""CLIP text encoder: FLUX takes its pooled output, from a 77-token window."""

import dataclasses

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req


@dataclasses.dataclass
class CLIPTextConfig(TextEncoderConfig):
    """CLIP ViT-L/14 text tower as FLUX uses it: the pooled output only, 77 tokens."""

    max_length: int | None = 77

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        outputs = text_encoder(self.tokenize(prompts, tokenizer, batch).input_ids.to(text_encoder.device))
        return TextEncoding(pooled=outputs.pooler_output)


@dataclasses.dataclass
class CLIPHiddenAndPooledConfig(TextEncoderConfig):
    """CLIP as SD3 takes it: the penultimate layer's token states and the projected pooled embedding, 77 tokens."""

    max_length: int | None = 77

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        input_ids = self.tokenize(prompts, tokenizer, batch).input_ids.to(text_encoder.device)
        outputs = text_encoder(input_ids, output_hidden_states=True)
        return TextEncoding(embeds=outputs.hidden_states[-2], pooled=outputs.text_embeds)
