"""Tiny random-weight text encoders, configured in code (the shapes of Diffusers' own pipeline tests)."""

from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

TEXT_ENCODER_HIDDEN_SIZE = 32


def _clip_config(tokenizer: CLIPTokenizer, hidden_size: int, hidden_act: str) -> CLIPTextConfig:
    """5 layers of `hidden_size` (4 heads), projection of the same width, on `tokenizer`'s vocabulary and ids."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act=hidden_act,
        projection_dim=hidden_size,
        # The pooled output is read at the first `eos_token_id`, so it must be the tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_config_kwargs(tokenizer: T5Tokenizer) -> dict:
    """2 gated-GELU layers of width 32 (4 heads of 8), on `tokenizer`'s vocabulary and ids: T5 v1.1 and UMT5."""
    return {
        "vocab_size": len(tokenizer),
        "d_model": TEXT_ENCODER_HIDDEN_SIZE,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0,
        "is_encoder_decoder": False,
        "use_cache": False,
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def build_clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A 5-layer CLIP text model of width 32 whose vocabulary and special ids match `tokenizer`."""
    return CLIPTextModel(_clip_config(tokenizer, TEXT_ENCODER_HIDDEN_SIZE, "quick_gelu")).eval()


def build_t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    """A 2-layer T5 v1.1-style (gated GELU) encoder of width 32 whose vocabulary matches `tokenizer`."""
    return T5EncoderModel(T5Config(**_t5_config_kwargs(tokenizer))).eval()


def build_clip_text_encoder_with_projection(
    tokenizer: CLIPTokenizer, hidden_size: int = TEXT_ENCODER_HIDDEN_SIZE, hidden_act: str = "quick_gelu"
) -> CLIPTextModelWithProjection:
    """A 5-layer CLIP text model with its projection head (SD3's encoders), of width and projection `hidden_size`.

    SD3 reads the penultimate hidden state per token and the projected pooled output (`text_embeds`). The real
    CLIP-L uses "quick_gelu", OpenCLIP's bigG "gelu".
    """
    return CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_size, hidden_act)).eval()


def build_umt5_encoder(tokenizer: T5Tokenizer) -> UMT5EncoderModel:
    """A 2-layer UMT5 encoder (Wan's text encoder: T5 v1.1 layout, relative position bias in every layer) of width
    32 whose vocabulary matches `tokenizer`."""
    return UMT5EncoderModel(UMT5Config(**_t5_config_kwargs(tokenizer))).eval()
