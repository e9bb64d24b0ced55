"""Tiny CLIP (byte-level BPE) and T5 (Unigram) tokenizers built in code, with no download.

Both vocabularies are derived deterministically from `ENGLISH_WORD_COUNTS`, a small built-in list of words that
image prompts use, so that ordinary prompts split into a few meaningful tokens. Any ASCII text still tokenizes
without `<unk>`: the CLIP vocabulary holds all 256 byte symbols and the T5 one every printable ASCII character.
"""

import functools
import math
import string
from collections import Counter
from collections.abc import Mapping

from transformers import CLIPTokenizer, T5Tokenizer

from easel.testing.qwen_tokenizer import byte_to_unicode

# Words of image prompts with made-up but stable frequencies: they only rank the BPE merges and the Unigram pieces.
ENGLISH_WORD_COUNTS: dict[str, int] = {
    "a": 500, "the": 450, "of": 300, "and": 280, "on": 250, "in": 240, "with": 220, "an": 200, "at": 150,
    "photo": 120, "picture": 60, "painting": 60, "image": 50, "drawing": 40, "portrait": 40, "style": 60,
    "red": 90, "blue": 90, "green": 80, "yellow": 60, "white": 70, "black": 70, "orange": 40, "purple": 40,
    "pink": 30, "gray": 30, "brown": 30, "golden": 25, "silver": 20, "dark": 40, "bright": 40, "light": 50,
    "circle": 50, "square": 40, "triangle": 30, "background": 80, "foreground": 20, "sky": 60, "sea": 40,
    "cat": 70, "dog": 70, "bird": 40, "horse": 30, "fish": 30, "lion": 20, "tiger": 20, "rabbit": 20,
    "man": 60, "woman": 60, "child": 40, "girl": 40, "boy": 40, "people": 40, "person": 30, "face": 40,
    "house": 40, "city": 50, "street": 40, "tree": 50, "trees": 30, "forest": 40, "mountain": 40,
    "mountains": 30, "river": 30, "lake": 30, "beach": 30, "flower": 40, "flowers": 40, "garden": 30,
    "car": 40, "boat": 30, "train": 20, "road": 30, "bridge": 20, "window": 30, "table": 30, "chair": 30,
    "sitting": 40, "standing": 40, "running": 30, "walking": 30, "flying": 20, "looking": 20, "holding": 20,
    "big": 40, "small": 40, "little": 30, "tall": 20, "old": 30, "new": 30, "beautiful": 40, "cute": 30,
    "sunset": 30, "night": 40, "morning": 20, "day": 30, "snow": 30, "rain": 20, "cloud": 20, "clouds": 30,
    "water": 40, "fire": 20, "stone": 20, "wooden": 20, "glass": 20, "metal": 20, "paper": 20,
    "high": 30, "quality": 30, "detailed": 40, "realistic": 30, "cinematic": 20, "lighting": 30,
    "blurry": 20, "low": 20, "ugly": 10, "watermark": 10, "text": 20, "art": 40, "digital": 30,
    "is": 100, "are": 60, "under": 30, "over": 30, "near": 20, "next": 20, "to": 150, "from": 60,
    "one": 30, "two": 30, "three": 20, "top": 20, "bottom": 20, "left": 20, "right": 20, "center": 20,
}  # fmt: skip

CLIP_BOS_TOKEN = "<|startoftext|>"
CLIP_EOS_TOKEN = "<|endoftext|>"
CLIP_MAX_LENGTH = 77
CLIP_MAX_MERGES = 400

T5_SPECIAL_PIECES = ("<pad>", "</s>", "<unk>")
T5_NUM_EXTRA_IDS = 100
T5_MAX_LENGTH = 512
T5_WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁", which marks the start of a word

# Single characters score below any two-character split of a known word, so known words stay whole.
T5_CHARACTER_SCORE = -20.0


@functools.cache
def _byte_symbols() -> tuple[str, ...]:
    """The 256 printable stand-ins for bytes of GPT-2 / CLIP byte-level BPE, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    unprintable = [byte for byte in range(256) if byte not in printable]
    return tuple(chr(byte) for byte in printable) + tuple(chr(256 + index) for index in range(len(unprintable)))


def learn_bpe_merges(words: Mapping[tuple[str, ...], int], max_merges: int) -> list[tuple[str, str]]:
    """BPE training over words given as their symbols (with counts): merge the most frequent adjacent pair each
    round. Ties are broken by the pair itself, so the result depends on nothing but the input."""
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pair_counts: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best_pair = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best_pair)
        words = {_merge_pair(symbols, best_pair): count for symbols, count in words.items()}
    return merges


def end_of_word_symbols(word_counts: Mapping[str, int]) -> dict[tuple[str, ...], int]:
    """Words as classic (CLIP) BPE starts from them: their characters, the last one marked with `</w>`."""
    return {tuple(word[:-1]) + (word[-1] + "</w>",): count for word, count in word_counts.items()}


def byte_level_symbols(word_counts: Mapping[str, int]) -> dict[tuple[str, ...], int]:
    """Words as byte-level (GPT-2 style) BPE starts from them: the bytes of " word", each as its printable
    character."""
    alphabet = byte_to_unicode()
    return {tuple(alphabet[byte] for byte in (" " + word).encode()): count for word, count in word_counts.items()}


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    index = 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(symbols[index] + symbols[index + 1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return tuple(merged)


def build_clip_tokenizer(word_counts: dict[str, int] | None = None) -> CLIPTokenizer:
    """A CLIP tokenizer in the real layout: bytes, bytes + `</w>`, one token per merge, then the two specials.

    `word_counts` replaces `ENGLISH_WORD_COUNTS` as the words whose merges are learned.
    """
    merges = learn_bpe_merges(end_of_word_symbols(word_counts or ENGLISH_WORD_COUNTS), CLIP_MAX_MERGES)
    tokens = [*_byte_symbols(), *(symbol + "</w>" for symbol in _byte_symbols())]
    tokens += [left + right for left, right in merges]
    tokens += [CLIP_BOS_TOKEN, CLIP_EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=CLIP_MAX_LENGTH,
    )


def _t5_pieces(word_counts: dict[str, int]) -> list[tuple[str, float]]:
    """Unigram pieces with log-probability scores: whole words from the word list, then every ASCII character."""
    total = sum(word_counts.values())
    word_pieces = {T5_WORD_BOUNDARY + word: math.log(count / total) for word, count in word_counts.items()}
    # "▁" alone lets an unknown word start with the word marker and continue in single characters.
    character_pieces = {
        character: T5_CHARACTER_SCORE
        for character in (T5_WORD_BOUNDARY, *string.digits, *string.ascii_letters, *string.punctuation)
    }
    pieces = {**character_pieces, **word_pieces}
    # SentencePiece orders a vocabulary by descending score; the piece breaks ties so the order is fixed.
    return sorted(pieces.items(), key=lambda piece: (-piece[1], piece[0]))


def build_t5_tokenizer(word_counts: dict[str, int] | None = None) -> T5Tokenizer:
    """A T5 tokenizer in T5 layout: `<pad>`=0, `</s>`=1, `<unk>`=2, the pieces, then `<extra_id_99>`..`<extra_id_0>`.

    `word_counts` replaces `ENGLISH_WORD_COUNTS` as the words that are single pieces.
    """
    extra_ids = [(f"<extra_id_{index}>", 0.0) for index in reversed(range(T5_NUM_EXTRA_IDS))]
    vocab = [(piece, 0.0) for piece in T5_SPECIAL_PIECES] + _t5_pieces(word_counts or ENGLISH_WORD_COUNTS) + extra_ids
    return T5Tokenizer(vocab=vocab, extra_ids=T5_NUM_EXTRA_IDS, model_max_length=T5_MAX_LENGTH)


def build_open_clip_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer as SDXL and SD3 ship it for OpenCLIP ViT-bigG (`tokenizer_2`): padded with "!" (id 0).

    Same vocabulary as `build_clip_tokenizer`; only the padding differs from CLIP-L's `<|endoftext|>`, as in the
    real folders, so a pipeline that tokenizes CLIP-G's input with CLIP-L's tokenizer gets other embeddings.
    """
    tokenizer = build_clip_tokenizer()
    tokenizer.pad_token = "!"
    return tokenizer
