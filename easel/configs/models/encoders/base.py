"""The base config of every text encoder: which modules it is, and how a prompt becomes embeddings."""

import dataclasses
import logging
from typing import ClassVar

import torch

from easel.runtime.pipelines_core.schedule_batch import Req

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TextEncoding:
    """What one text encoder made of a list of prompts."""

    embeds: torch.Tensor | None = None  # (B, T, D), goes to batch.prompt_embeds
    pooled: torch.Tensor | None = None  # (B, D), goes to batch.pooled_embeds
    mask: torch.Tensor | None = None  # (B, T), 1 for real tokens, goes to batch.prompt_embeds_mask

    def rows(self, rows: slice) -> "TextEncoding":
        """The encoding of some of its prompts."""
        return TextEncoding(*(None if t is None else t[rows] for t in (self.embeds, self.pooled, self.mask)))


@dataclasses.dataclass
class TextEncoderConfig:
    """How `TextEncodingStage` runs one tokenizer + text encoder pair; a model overrides `encode` as it needs."""

    tokenizer: str = "tokenizer"  # module names, as in model_index.json
    text_encoder: str = "text_encoder"
    max_length: int | None = None  # None: the request's `max_sequence_length`
    # True when a prompt's encoding does not depend on the prompts encoded with it (each is padded to one window):
    # then the prompts of several requests may share a call (`TextEncodingStage.forward_many`).
    fixed_window: ClassVar[bool] = True

    def encode(self, prompts: list[str], tokenizer, text_encoder, batch: Req) -> TextEncoding:
        """The last hidden state of prompts padded to the full window."""
        outputs = text_encoder(self.tokenize(prompts, tokenizer, batch).input_ids.to(text_encoder.device))
        return TextEncoding(embeds=outputs.last_hidden_state)

    def tokenize(self, prompts: list[str], tokenizer, batch: Req):
        """Token ids padded (and truncated, with a warning) to `max_length`."""
        max_length = self.max_length or batch.max_sequence_length
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        if tokenizer(prompts, padding="longest", return_tensors="pt").input_ids.shape[-1] > max_length:
            logger.warning("the prompt was truncated to the %d tokens %s takes", max_length, self.text_encoder)
        return tokens
