"""`TextEncodingStage`: prompts to embeddings, through each of the model's text encoders in turn."""

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs


class TextEncodingStage(PipelineStage):
    """Encodes the prompt (and the negative prompt under CFG) with every (tokenizer, encoder) pair."""

    input_fields = ("prompt",)

    def __init__(self, text_encoders: list, tokenizers: list, encoder_configs: tuple[TextEncoderConfig, ...]):
        self.encoders = list(zip(tokenizers, text_encoders, encoder_configs, strict=True))

    def verify_output(self, batch: Req, server_args: ServerArgs) -> list[str]:
        missing = [] if batch.prompt_embeds or batch.pooled_embeds else ["prompt_embeds"]
        if batch.do_classifier_free_guidance and not (batch.negative_prompt_embeds or batch.neg_pooled_embeds):
            missing.append("negative_prompt_embeds")
        return missing

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        config = server_args.pipeline_config
        sides = [(batch.prompt, False)]
        if batch.do_classifier_free_guidance:
            sides.append((batch.negative_prompt or [""] * len(batch.prompt), True))
        for prompts, negative in sides:
            encodings = [cfg.encode(prompts, tokenizer, encoder, batch) for tokenizer, encoder, cfg in self.encoders]
            for encoding in config.postprocess_text_encodings(encodings, batch):
                self._store(encoding, batch, negative)
        return batch

    @staticmethod
    def _store(encoding: TextEncoding, batch: Req, negative: bool) -> None:
        """Appends the encoding's tensors, repeated for every output of a prompt, to the batch's lists."""
        n = batch.num_outputs_per_prompt
        if encoding.embeds is not None:
            embeds, masks = (
                (batch.negative_prompt_embeds, batch.negative_prompt_embeds_mask)
                if negative
                else (batch.prompt_embeds, batch.prompt_embeds_mask)
            )
            embeds.append(encoding.embeds.repeat_interleave(n, dim=0))
            masks.append(None if encoding.mask is None else encoding.mask.repeat_interleave(n, dim=0))
        if encoding.pooled is not None:
            pooled = batch.neg_pooled_embeds if negative else batch.pooled_embeds
            pooled.append(encoding.pooled.repeat_interleave(n, dim=0))
