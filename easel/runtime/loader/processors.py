"""Processors whose own `from_pretrained` needs torchvision, assembled here from parts that do not."""

import os
import pathlib

from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without its video processor, which cannot be built without torchvision.

    Images and text are processed exactly as by `Qwen2VLProcessor`; only videos are unsupported (no Qwen-Image
    pipeline passes any).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # What Qwen2VLProcessor.__init__ sets up, minus the video processor it would type-check.
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_qwen_processor(
    path: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase | None = None
) -> Qwen2VLImageTextProcessor:
    """The Qwen2.5-VL processor of a Qwen-Image `processor/` folder, assembled without torchvision.

    Reads the tokenizer files (unless `tokenizer` is given, e.g. the already loaded `tokenizer/` of the same
    vocabulary) and `preprocessor_config.json` into `Qwen2VLImageProcessorPil`, the PIL twin of the torchvision
    image processor `Qwen2VLProcessor.from_pretrained` would pick.
    """
    path = pathlib.Path(path)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return Qwen2VLImageTextProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_pixtral_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer of FLUX.2-dev's `tokenizer/` (a `PixtralProcessor`, which needs torchvision): its prompt
    encoding only renders the chat template and tokenizes, which the tokenizer does alone."""
    return AutoTokenizer.from_pretrained(path)


# Processor class names in model_index.json -> how Easel loads them.
PROCESSOR_LOADERS = {"Qwen2VLProcessor": load_qwen_processor, "PixtralProcessor": load_pixtral_tokenizer}
