"""The base config of every text encoder: which modules it is and what the pipeline takes from its output."""

import dataclasses
from typing import Literal


@dataclasses.dataclass
class TextEncoderConfig:
    """How `TextEncodingStage` runs one tokenizer + text encoder pair."""

    tokenizer: str = "tokenizer"  # module names, as in model_index.json
    text_encoder: str = "text_encoder"
    # "sequence": the last hidden state goes to `batch.prompt_embeds`;
    # "pooled": the pooled output goes to `batch.pooled_embeds`.
    output: Literal["sequence", "pooled"] = "sequence"
    max_length: int | None = None  # None: the request's `max_sequence_length`
