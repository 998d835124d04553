"""Tests for accelopt/pipelines/tokenizers.py: offline CLIP and T5 tokenizers."""

from __future__ import annotations

import re

import pytest

from accelopt.pipelines.tokenizers import CLIP_MAX_LENGTH, clip_tokenizer, t5_tokenizer
from accelopt.prompts import load_prompts

CLIP_BOS = 49406
CLIP_EOS = 49407

CLIP_STRINGS = [
    "a red cube",
    "Hello, World!",
    "A PHOTO of 3 cats; 100% real?",
    "héllo naïve café",
    "it's 2024 -- don't you're",
    "  multiple   spaces\tand\nnewlines  ",
    "日本語 emoji 🎉",
    "x" * 40,
    "",
]


@pytest.fixture(scope="module")
def clip():
    return clip_tokenizer()


@pytest.fixture(scope="module")
def open_clip_tokenize():
    import open_clip  # a dependency of accelopt: its BPE file is what clip_tokenizer reads

    return open_clip.get_tokenizer("ViT-B-32")


def _open_clip_ids(tokenize, text: str) -> list[int]:
    # open_clip pads to 77 with zeros; the real ids end at the first end token.
    ids = tokenize(text)[0].tolist()
    return ids[: ids.index(CLIP_EOS) + 1]


def test_clip_vocabulary_size_and_special_tokens(clip) -> None:
    assert len(clip) == 49408
    assert clip.bos_token_id == CLIP_BOS
    assert clip.eos_token_id == CLIP_EOS
    assert clip.convert_ids_to_tokens([CLIP_BOS, CLIP_EOS]) == ["<|startoftext|>", "<|endoftext|>"]


@pytest.mark.parametrize("text", CLIP_STRINGS)
def test_clip_ids_equal_open_clip(clip, open_clip_tokenize, text: str) -> None:
    ids = clip(text).input_ids
    assert ids == _open_clip_ids(open_clip_tokenize, text)
    assert ids[0] == CLIP_BOS
    assert ids[-1] == CLIP_EOS
    assert CLIP_EOS not in ids[:-1]


def test_clip_model_max_length(clip) -> None:
    assert CLIP_MAX_LENGTH == 77
    assert clip.model_max_length == 77


def test_clip_truncates_to_77(clip) -> None:
    text = " ".join(["cube"] * 200)
    full = clip(text).input_ids
    assert len(full) > 77  # the premise: the untruncated prompt is longer than CLIP's window
    truncated = clip(text, truncation=True).input_ids
    assert len(truncated) == 77
    assert truncated == [*full[:76], CLIP_EOS]
    padded = clip("a red cube", padding="max_length", truncation=True).input_ids
    assert len(padded) == 77


def test_clip_max_length_argument() -> None:
    short = clip_tokenizer(max_length=16)
    assert short.model_max_length == 16
    assert len(short(" ".join(["cube"] * 40), truncation=True).input_ids) == 16


T5_WORDS = ["red", "cube", "astronaut", "horse", "riding", "watercolor", "a", "of"]


@pytest.fixture(scope="module")
def t5():
    return t5_tokenizer(T5_WORDS)


def test_t5_special_ids(t5) -> None:
    assert t5.pad_token_id == 0
    assert t5.eos_token_id == 1
    assert t5.unk_token_id == 2
    assert t5.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]


@pytest.mark.parametrize("word", T5_WORDS)
def test_t5_word_is_one_piece(t5, word: str) -> None:
    assert t5.tokenize(word) == ["▁" + word]
    ids = t5(word).input_ids
    assert len(ids) == 2
    assert ids[-1] == t5.eos_token_id == 1
    assert ids[0] == t5.convert_tokens_to_ids("▁" + word)
    assert ids[0] != t5.unk_token_id


def test_t5_sentence_of_listed_words(t5) -> None:
    sentence = "a red cube of watercolor"
    assert t5.tokenize(sentence) == ["▁" + w for w in sentence.split()]
    ids = t5(sentence).input_ids
    assert ids[-1] == 1
    assert 2 not in ids


def test_t5_unlisted_ascii_falls_back_to_characters(t5) -> None:
    # Words outside the list are spelled out from single characters, never <unk>.
    ids = t5("zebra Qx!").input_ids
    assert 2 not in ids
    assert len(ids) > 3


def test_t5_pads_with_zero(t5) -> None:
    ids = t5("red cube", padding="max_length", max_length=8).input_ids
    assert ids == [
        t5.convert_tokens_to_ids("▁red"),
        t5.convert_tokens_to_ids("▁cube"),
        1,
        0,
        0,
        0,
        0,
        0,
    ]


def test_t5_over_the_prompt_vocabulary() -> None:
    # The tiny PixArt builds its tokenizer from the words of the shipped prompts.
    prompts = load_prompts()
    words = sorted({w for p in prompts for w in re.findall(r"[a-z]+", p.text.lower())})
    tok = t5_tokenizer(words)
    pieces = {w: tok.tokenize(w) for w in words}
    assert {w: p for w, p in pieces.items() if p != ["▁" + w]} == {}
    for p in prompts:
        ids = tok(p.text).input_ids
        assert tok.unk_token_id not in ids, p.id
        assert ids[-1] == tok.eos_token_id
