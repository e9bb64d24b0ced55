"""`TextEncodingStage`: prompts to embeddings, through each of the model's text encoders in turn."""

import logging

import torch

from easel.configs.models.encoders.base import TextEncoderConfig
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage, is_set
from easel.runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)


class TextEncodingStage(PipelineStage):
    """Encodes the prompt (and the negative prompt under CFG) with every (tokenizer, encoder) pair."""

    input_fields = ("prompt",)

    def __init__(self, text_encoders: list, tokenizers: list, encoder_configs: tuple[TextEncoderConfig, ...]):
        self.encoders = list(zip(tokenizers, text_encoders, encoder_configs, strict=True))

    def verify_output(self, batch: Req, server_args: ServerArgs) -> list[str]:
        fields = {self._field(cfg, negative) for _, _, cfg in self.encoders for negative in self._sides(batch)}
        return sorted(field for field in fields if not is_set(getattr(batch, field)))

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        for negative in self._sides(batch):
            prompts = (batch.negative_prompt or [""] * len(batch.prompt)) if negative else batch.prompt
            for tokenizer, encoder, cfg in self.encoders:
                embeds = self.encode(prompts, tokenizer, encoder, cfg, batch.max_sequence_length)
                embeds = embeds.repeat_interleave(batch.num_outputs_per_prompt, dim=0)
                getattr(batch, self._field(cfg, negative)).append(embeds)
        return batch

    @staticmethod
    def encode(prompts: list[str], tokenizer, encoder, cfg: TextEncoderConfig, max_sequence_length: int):
        """(B, T, D) hidden states for "sequence" encoders, (B, D) for "pooled" ones."""
        max_length = cfg.max_length or max_sequence_length
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        untruncated = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] > max_length:
            logger.warning("prompt truncated to the %d tokens %s takes", max_length, type(encoder).__name__)
        device = next(encoder.parameters()).device
        with torch.inference_mode():
            outputs = encoder(tokens.input_ids.to(device), output_hidden_states=False)
        return outputs.pooler_output if cfg.output == "pooled" else outputs.last_hidden_state

    @staticmethod
    def _sides(batch: Req) -> tuple[bool, ...]:
        return (False, True) if batch.do_classifier_free_guidance else (False,)

    @staticmethod
    def _field(cfg: TextEncoderConfig, negative: bool) -> str:
        if cfg.output == "pooled":
            return "neg_pooled_embeds" if negative else "pooled_embeds"
        return "negative_prompt_embeds" if negative else "prompt_embeds"
