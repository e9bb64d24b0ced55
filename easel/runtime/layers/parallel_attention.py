"""Sequence-parallel attention: Ulysses, ring, and both together (USP), over a sequence sharded across the SP group.

Each rank holds queries, keys and values for its own tokens, (B, L_local, H, D), and gets back the attention output
of those tokens over the whole sequence. The sequence order of keys does not matter to attention, so a rank's tokens
may come from several streams (text and image shards alike); padding arrives as masked keys.

- Ulysses: one all-to-all turns sequence shards into head shards (every token, H / U heads), attention runs
  locally, and one all-to-all turns the output back. Needs the heads to divide by U.
- Ring: K/V blocks travel around the ring while each rank attends its queries to the block it holds; the partial
  outputs are merged with their log-sum-exp (online softmax), so no rank ever holds the whole sequence.
- USP: Ulysses inside each ring position, then ring attention over the Ulysses-gathered blocks.
"""

import math

import torch
import torch.distributed as dist

from easel.errors import InvalidInputError
from easel.runtime.distributed.communication import all_gather, all_to_all
from easel.runtime.distributed.parallel_state import get_group, get_group_rank, get_group_ranks, get_group_size
from easel.runtime.layers.kv_cache import KVCache


def attention_with_lse_reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of (B, L, H, D) tensors in plain torch: the output (B, L, H, D) and the log-sum-exp of each
    query's scores (B, H, L), float32. A query whose keys are all masked gets output 0 and log-sum-exp -inf."""
    q, k, v = (t.transpose(1, 2).float() for t in (query, key, value))  # (B, H, L, D)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L_q, L_k)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, L_q)
    weights = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
    out = (weights @ v).transpose(1, 2).to(query.dtype)
    return out, lse


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `attention_with_lse_reference`, through PyTorch's fused flash kernels where they return the log-sum-exp
    (the CPU one here; CUDA's efficient-attention kernel takes the mask as a bias)."""
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, L, D)
    bias = None
    if key_mask is not None:
        batch, keys = key_mask.shape
        # Stored padded to 16 keys a row: CUDA's kernel wants each sample's bias rows aligned.
        storage = torch.zeros(batch, -(-keys // 16) * 16, dtype=q.dtype, device=q.device)
        bias = storage[:, :keys].masked_fill_(~key_mask, float("-inf"))  # in place: the view keeps the row stride
        bias = bias[:, None, None, :].expand(-1, q.shape[1], q.shape[2], -1)  # (B, H, L_q, L_k)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)[:2]
    elif q.device.type == "cuda":
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, compute_log_sumexp=True)[:2]
        lse = lse[..., : q.shape[2]]  # the kernel pads its log-sum-exp rows to a multiple of 32
    else:
        return attention_with_lse_reference(query, key, value, key_mask)
    if key_mask is not None:  # rows with every key masked: 0 and -inf, as the reference has them
        empty = ~key_mask.any(dim=1)  # (B,); applied whether or not any is, so the GPU never waits on the host
        out = out.masked_fill(empty[:, None, None, None], 0.0)
        lse = lse.masked_fill(empty[:, None, None], float("-inf"))
    return out.transpose(1, 2), lse.float()


def _merge(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two partial attentions of the same queries over disjoint keys, combined exactly (float32 out, (B, L, H, D))."""
    merged_lse = torch.logaddexp(lse, block_lse)  # (B, H, L)
    # exp(-inf - -inf) is NaN where neither part has a key yet; such a part weighs 0.
    w_old = torch.exp(lse - merged_lse).nan_to_num(0.0).transpose(1, 2)[..., None]  # (B, L, H, 1)
    w_new = torch.exp(block_lse - merged_lse).nan_to_num(0.0).transpose(1, 2)[..., None]
    return out * w_old + block_out.float() * w_new, merged_lse


def ring_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of this rank's queries over the keys of every rank of the ring group; K/V blocks (and their mask)
    are passed to the next rank while the current one is attended to."""
    size = get_group_size("ring")
    ranks, me = get_group_ranks("ring"), get_group_rank("ring")
    send_to, recv_from = ranks[(me + 1) % size], ranks[(me - 1) % size]
    group = get_group("ring")
    if key_mask is None:
        block = [key.contiguous(), value.contiguous()]
    else:
        block = [key.contiguous(), value.contiguous(), key_mask.to(torch.uint8).contiguous()]
    out, lse = None, None
    for step in range(size):
        pending, incoming = [], []
        if step < size - 1:
            incoming = [torch.empty_like(t) for t in block]
            ops = [dist.P2POp(dist.isend, t, send_to, group) for t in block]
            ops += [dist.P2POp(dist.irecv, t, recv_from, group) for t in incoming]
            pending = dist.batch_isend_irecv(ops)
        mask = block[2].bool() if key_mask is not None else None
        block_out, block_lse = attention_with_lse(query, block[0], block[1], mask)
        if out is None:
            out, lse = block_out.float(), block_lse
        else:
            out, lse = _merge(out, lse, block_out, block_lse)
        for request in pending:
            request.wait()
        block = incoming
    return out.to(query.dtype)


def sequence_parallel_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    local_attention,
    kv_cache: KVCache | None = None,
) -> torch.Tensor:
    """USP attention over the SP group: Ulysses over its `ulysses` ranks, ring over its `ring` ranks (either may be
    1). attn_mask is this rank's key mask (B, L_local) or None; local_attention(q, k, v, attn_mask=...) is the backend
    that runs when no ring is needed. A kv_cache holds this rank's heads of every earlier token, as Ulysses gathers
    them: it needs the whole sequence on each rank, so no ring and no padding."""
    ulysses = get_group_size("ulysses")
    if kv_cache is not None and (get_group_size("ring") > 1 or attn_mask is not None):
        raise InvalidInputError(
            "a KV cache (block-causal generation) runs under Ulysses sequence parallelism only, with each block's "
            "tokens dividing by the degree: drop --ring-degree, or choose a size whose frames divide evenly"
        )
    if ulysses > 1:
        heads = query.shape[2]
        if heads % ulysses:
            raise InvalidInputError(
                f"{heads} attention heads (per tensor-parallel rank) do not divide by the Ulysses degree {ulysses}; "
                "choose a Ulysses degree that divides them and use ring attention (--ring-degree) for the rest"
            )
        # (B, L_local, H, D) -> (B, U L_local, H / U, D): every token of the Ulysses group, this rank's heads.
        query, key, value = (all_to_all(t, "ulysses", scatter_dim=2, gather_dim=1) for t in (query, key, value))
        if attn_mask is not None:
            attn_mask = all_gather(attn_mask, "ulysses", dim=1)
    if kv_cache is not None:
        key, value = kv_cache.extend(key, value)
    if get_group_size("ring") > 1:
        out = ring_attention(query, key, value, attn_mask)
    elif attn_mask is None:
        out = local_attention(query, key, value)
    else:
        out = local_attention(query, key, value, attn_mask=attn_mask)
    if ulysses > 1:
        out = all_to_all(out, "ulysses", scatter_dim=1, gather_dim=2)  # back to (B, L_local, H, D)
    return out


__all__ = ["attention_with_lse", "attention_with_lse_reference", "ring_attention", "sequence_parallel_attention"]
