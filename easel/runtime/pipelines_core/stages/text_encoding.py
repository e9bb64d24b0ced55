"""`TextEncodingStage`: prompts to embeddings, through each of the model's text encoders in turn."""

from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs


class TextEncodingStage(PipelineStage):
    """Encodes the prompt (and the negative prompt under CFG) with every (tokenizer, encoder) pair."""

    input_fields = ("prompt",)
    shares_work_across_requests = True

    def __init__(self, text_encoders: list, tokenizers: list, encoder_configs: tuple[TextEncoderConfig, ...]):
        self.encoders = list(zip(tokenizers, text_encoders, encoder_configs, strict=True))

    def verify_output(self, batch: Req, server_args: ServerArgs) -> list[str]:
        missing = [] if batch.prompt_embeds or batch.pooled_embeds else ["prompt_embeds"]
        if batch.do_classifier_free_guidance and not (batch.negative_prompt_embeds or batch.neg_pooled_embeds):
            missing.append("negative_prompt_embeds")
        return missing

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        return self.forward_many([batch], server_args)[0]

    def forward_many(self, batches: list[Req], server_args: ServerArgs) -> list[Req]:
        """Encodes the prompts of requests that can share encoder calls in one call per encoder and side (the
        prompts, then the negative ones of those under CFG): each prompt's encoding is then the same as alone."""
        config = server_args.pipeline_config
        for group in self._groups(batches):
            for negative in (False, True):
                members = [batch for batch in group if batch.do_classifier_free_guidance or not negative]
                if not members:
                    continue
                prompts = [prompt for batch in members for prompt in _prompts(batch, negative)]
                # Encoders read nothing of a request but its window, which the group shares.
                encodings = [cfg.encode(prompts, tok, encoder, members[0]) for tok, encoder, cfg in self.encoders]
                start = 0
                for batch in members:
                    rows = slice(start, start + len(batch.prompt))
                    start = rows.stop
                    own = [encoding.rows(rows) for encoding in encodings]
                    for encoding in config.postprocess_text_encodings(own, batch):
                        self._store(encoding, batch, negative)
        return batches

    def _groups(self, batches: list[Req]) -> list[list[Req]]:
        """Requests whose prompts may share encoder calls: every encoder pads to a fixed window, the requests ask
        for one window (max_sequence_length), and none has input images (which vision-language encoders read)."""
        if not all(cfg.fixed_window for _, _, cfg in self.encoders):
            return [[batch] for batch in batches]
        groups: dict[object, list[Req]] = {}
        for batch in batches:
            key = batch.max_sequence_length if not batch.condition_images else id(batch)
            groups.setdefault(key, []).append(batch)
        return list(groups.values())

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


def _prompts(batch: Req, negative: bool) -> list[str]:
    if not negative:
        return batch.prompt
    return batch.negative_prompt or [""] * len(batch.prompt)
