"""Qwen2.5-VL as Qwen-Image's text encoder: a system-prompt template whose own tokens are dropped from the output."""

import dataclasses

import torch

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req

QWEN_IMAGE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


@dataclasses.dataclass
class QwenVLTextConfig(TextEncoderConfig):
    """The last hidden states of the prompt's tokens only: the template's first `drop_tokens` are cut off."""

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
        return self.pad(per_prompt, batch)

    @staticmethod
    def pad(per_prompt: list[torch.Tensor], batch: Req) -> TextEncoding:
        """Right-pads each prompt's (T_i, D) states to the longest, cut to the request's `max_sequence_length`; the
        mask is dropped when every token is real (the DiT then attends to all, as Diffusers does)."""
        length = max(len(states) for states in per_prompt)
        embeds = torch.stack([torch.cat([s, s.new_zeros(length - len(s), s.shape[1])]) for s in per_prompt])
        mask = torch.stack([torch.arange(length, device=embeds.device) < len(s) for s in per_prompt]).long()
        embeds, mask = embeds[:, : batch.max_sequence_length], mask[:, : batch.max_sequence_length]
        return TextEncoding(embeds=embeds, mask=None if mask.all() else mask)
