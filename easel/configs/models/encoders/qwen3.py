"""Qwen3 as Z-Image's text encoder: the chat-templated prompt's second-to-last hidden states, padding masked."""

import dataclasses

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req


@dataclasses.dataclass
class Qwen3TextConfig(TextEncoderConfig):
    """The prompt goes in as a user turn of Qwen3's chat template, padded to the request's window."""

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        turns = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
            )
            for prompt in prompts
        ]
        tokens = self.tokenize(turns, tokenizer, batch)
        mask = tokens.attention_mask.to(text_encoder.device)
        outputs = text_encoder(
            input_ids=tokens.input_ids.to(text_encoder.device), attention_mask=mask.bool(), output_hidden_states=True
        )
        return TextEncoding(embeds=outputs.hidden_states[-2], mask=mask)
