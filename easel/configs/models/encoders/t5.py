"""T5 v1.1 XXL encoder: its full hidden-state sequence conditions the DiT."""

import dataclasses

from easel.configs.models.encoders.base import TextEncoderConfig


@dataclasses.dataclass
class T5Config(TextEncoderConfig):
    """The T5 encoder; its window is the request's `max_sequence_length` (512 for FLUX.1-dev)."""

    tokenizer: str = "tokenizer_2"
    text_encoder: str = "text_encoder_2"
