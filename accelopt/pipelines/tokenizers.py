"""Tokenizers built offline, from files that installed packages already ship.

The CLIP tokenizer is rebuilt from open_clip's bundled BPE file; its ids equal open_clip's and the
hub's ``openai/clip-vit-large-patch14`` tokenizer. The T5 tokenizer is a small Unigram vocabulary
from a word list: enough for tiny PixArt pipelines, not a replacement for the real one.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, T5Tokenizer

__all__ = ["clip_tokenizer", "t5_tokenizer"]

CLIP_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest above 255.
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _open_clip_bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip_torch is required for the offline CLIP tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    with gzip.open(_open_clip_bpe_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = tuple(lines[1 : 49152 - 256 - 2 + 1])  # the slice open_clip's SimpleTokenizer takes
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """The CLIP BPE tokenizer (49,408 tokens), built without a download.

    >>> clip_tokenizer()("a red cube").input_ids[:3]
    [49406, 320, 736]
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    # transformers 5 silently builds a 3-token vocabulary from vocab_file=/merges_file=; the
    # in-memory vocab= / merges= arguments are the ones that work.
    # The annotation says list[str]; the tokenizers backend wants (left, right) pairs.
    pairs: Any = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=max_length)


def t5_tokenizer(words: Iterable[str], max_length: int = 120) -> T5Tokenizer:
    """A Unigram T5 tokenizer over ``words`` (case kept) plus single characters.

    Every printable ASCII character and every character of ``words`` has a piece of its own, so
    text made of them never maps to <unk>. Ids start with <pad>=0, </s>=1, <unk>=2 as in T5;
    whole words score above characters, so a listed word is one token.
    """
    from transformers import T5Tokenizer

    vocabulary = sorted({w.strip() for w in words if w.strip()})
    chars = sorted({chr(c) for c in range(33, 127)} | set("".join(vocabulary)))
    pieces: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0}
    for w in vocabulary:
        pieces.setdefault("▁" + w, -2.0)
    pieces.setdefault("▁", -3.0)
    for c in chars:
        pieces.setdefault(c, -10.0)
        pieces.setdefault("▁" + c, -9.0)
    return T5Tokenizer(vocab=list(pieces.items()), extra_ids=0, model_max_length=max_length)
