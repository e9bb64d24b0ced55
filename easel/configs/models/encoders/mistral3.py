"""Mistral Small 3 as FLUX.2-dev's text encoder: the prompt after BFL's system message, three layers stacked."""

import dataclasses

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.configs.models.encoders.qwen3 import stacked_hidden_states
from easel.runtime.pipelines_core.schedule_batch import Req

# BFL's system message for FLUX.2 prompts (black-forest-labs/flux2 `system_messages.py`), as Diffusers sends it.
SYSTEM_MESSAGE = (
    "You are an AI that reasons about image descriptions. You give structured responses focusing on object "
    "relationships, object\nattribution and actions without speculation."
)


@dataclasses.dataclass
class Mistral3TextConfig(TextEncoderConfig):
    """The prompt as a user turn after the system message, through the processor's chat template, padded to the
    request's window; layers 10, 20 and 30 stacked per token, padding included, as Diffusers does."""

    hidden_state_layers: tuple[int, ...] = (10, 20, 30)

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        conversations = [
            [
                {"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                # [IMG] would make Pixtral's processor count image tokens that no image fills.
                {"role": "user", "content": [{"type": "text", "text": prompt.replace("[IMG]", "")}]},
            ]
            for prompt in prompts
        ]
        tokens = tokenizer.apply_chat_template(
            conversations,
            add_generation_prompt=False,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.max_length or batch.max_sequence_length,
        )
        outputs = text_encoder(
            input_ids=tokens["input_ids"].to(text_encoder.device),
            attention_mask=tokens["attention_mask"].to(text_encoder.device),
            output_hidden_states=True,
            use_cache=False,
        )
        return TextEncoding(embeds=stacked_hidden_states(outputs.hidden_states, self.hidden_state_layers))
