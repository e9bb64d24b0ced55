"""Init scaling that makes tiny random DiTs listen to their conditioning, as trained ones do.

Default (PyTorch) init leaves a random DiT nearly blind to its prompt: its output is close to a linear map of the
noise, and two prompts move the decoded pixels by about 1e-2 at most. Parity tests need every text input to move the
output by at least ten times their tolerance, so a few inits are scaled to the magnitudes a trained model works at.
"""

import torch
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding
from torch import nn

# The conditioning vector (timestep, guidance, pooled text) comes out of its embedders with std about 0.25, so the
# adaLN modulation is dominated by its random biases; scaled 4x it has about unit std.
CONDITIONING_EMBEDDING_GAIN = 4.0
# The adaLN shift/scale/gate projections then give vectors of std about 0.35; scaled 2x the blocks' updates (and
# the final shift/scale) are of the order of the residual stream instead of a small correction to it.
MODULATION_GAIN = 2.0
# Query/key RMSNorm weights of 1 give attention logits of unit std, spreading each image token's attention evenly
# over hundreds of mostly-padding text tokens, which washes out the few prompt tokens; 2x makes attention selective.
QUERY_KEY_NORM_GAIN = 2.0
QUERY_KEY_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


@torch.no_grad()
def strengthen_conditioning(
    transformer: nn.Module, modulation_types: tuple[type, ...], attention_types: tuple[type, ...]
) -> None:
    """Scales, in a Diffusers MMDiT (FLUX, SD3), the embedders' outputs, the adaLN projections and the qk-norms."""
    for embedder in transformer.time_text_embed.children():
        if isinstance(embedder, TimestepEmbedding | PixArtAlphaTextProjection):
            for parameter in embedder.linear_2.parameters():
                parameter.mul_(CONDITIONING_EMBEDDING_GAIN)
    for module in transformer.modules():
        if isinstance(module, modulation_types):
            module.linear.weight.mul_(MODULATION_GAIN)
        if isinstance(module, attention_types):
            for name in QUERY_KEY_NORMS:
                if getattr(module, name, None) is not None:
                    getattr(module, name).weight.mul_(QUERY_KEY_NORM_GAIN)
