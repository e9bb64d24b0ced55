"""Qwen3 as Z-Image's text encoder: the chat-templated prompt's second-to-last hidden states, padding masked."""

import dataclasses

import torch

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


def stacked_hidden_states(hidden_states: tuple[torch.Tensor, ...], layers: tuple[int, ...]) -> torch.Tensor:
    """The hidden states of `layers`, each (B, T, D), side by side per token: (B, T, len(layers) * D)."""
    stacked = torch.stack([hidden_states[layer] for layer in layers], dim=1)  # (B, n, T, D)
    return stacked.permute(0, 2, 1, 3).flatten(2)


@dataclasses.dataclass
class Qwen3StackedTextConfig(TextEncoderConfig):
    """FLUX.2-klein: the chat-templated prompt (thinking off) through Qwen3, three layers' hidden states stacked per
    token; every token of the padded window goes to the DiT, padding included, as Diffusers does."""

    hidden_state_layers: tuple[int, ...] = (9, 18, 27)

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        turns = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
            for prompt in prompts
        ]
        tokens = self.tokenize(turns, tokenizer, batch)
        outputs = text_encoder(
            input_ids=tokens.input_ids.to(text_encoder.device),
            attention_mask=tokens.attention_mask.to(text_encoder.device),
            output_hidden_states=True,
            use_cache=False,
        )
        return TextEncoding(embeds=stacked_hidden_states(outputs.hidden_states, self.hidden_state_layers))
