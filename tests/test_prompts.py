"""Tests for accelopt/prompts.py: the shipped prompt set and its splits."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from accelopt.errors import AccelOptError
from accelopt.prompts import SPLITS, Prompt, load_prompts


def _raw() -> list[dict[str, str]]:
    # Read the file directly, so the tests do not depend on load_prompts to check load_prompts.
    text = resources.files("accelopt").joinpath("data/prompts.json").read_text("utf-8")
    return json.loads(text)["prompts"]


def test_splits() -> None:
    assert SPLITS == ("search", "heldout")


def test_at_least_200_prompts() -> None:
    prompts = load_prompts()
    assert len(prompts) >= 200
    assert len(prompts) == len(_raw())
    assert all(isinstance(p, Prompt) for p in prompts)


def test_all_prompts_in_file_order() -> None:
    assert [p.id for p in load_prompts()] == [r["id"] for r in _raw()]


def test_ids_unique() -> None:
    ids = Counter(p.id for p in load_prompts())
    assert [i for i, n in ids.items() if n > 1] == []


def test_texts_unique_case_insensitively() -> None:
    texts = Counter(p.text.strip().lower() for p in load_prompts())
    assert [t for t, n in texts.items() if n > 1] == []


def test_texts_not_empty() -> None:
    assert [p.id for p in load_prompts() if not p.text.strip()] == []


def test_every_prompt_has_a_valid_split() -> None:
    assert {p.split for p in load_prompts()} <= set(SPLITS)


def test_splits_non_empty_and_disjoint() -> None:
    search = load_prompts("search")
    heldout = load_prompts("heldout")
    assert search
    assert len(heldout) >= 40
    assert {p.split for p in search} == {"search"}
    assert {p.split for p in heldout} == {"heldout"}
    assert {p.id for p in search}.isdisjoint(p.id for p in heldout)
    assert {p.text.lower() for p in search}.isdisjoint(p.text.lower() for p in heldout)
    assert len(search) + len(heldout) == len(load_prompts())


def test_every_category_in_both_splits() -> None:
    by_split = {s: {p.category for p in load_prompts(s)} for s in SPLITS}
    categories = {p.category for p in load_prompts()}
    assert len(categories) > 1
    assert by_split["search"] == categories
    assert by_split["heldout"] == categories


def test_count_takes_the_first_prompts_of_the_split_in_file_order() -> None:
    expected = [r["id"] for r in _raw() if r["split"] == "search"][:8]
    got = load_prompts("search", 8)
    assert [p.id for p in got] == expected
    assert got == load_prompts("search")[:8]


def test_count_without_split() -> None:
    assert [p.id for p in load_prompts(count=5)] == [r["id"] for r in _raw()[:5]]


def test_whole_split_count_is_accepted() -> None:
    n = len(load_prompts("heldout"))
    assert len(load_prompts("heldout", n)) == n


def test_returned_list_is_a_copy() -> None:
    first = load_prompts()
    first.clear()
    assert len(load_prompts()) == len(_raw())


@pytest.mark.parametrize("split", ["train", "Search", "held-out", ""])
def test_bad_split_names_valid_choices(split: str) -> None:
    with pytest.raises(AccelOptError) as info:
        load_prompts(split)
    message = str(info.value)
    assert repr(split) in message
    assert "search" in message
    assert "heldout" in message


@pytest.mark.parametrize("split", ["search", "heldout", None])
@pytest.mark.parametrize("offset", ["zero", "negative", "one_too_many"])
def test_count_out_of_range_names_the_range(split: str | None, offset: str) -> None:
    size = len(load_prompts(split))
    count = {"zero": 0, "negative": -1, "one_too_many": size + 1}[offset]
    with pytest.raises(AccelOptError) as info:
        load_prompts(split, count)
    message = str(info.value)
    assert str(count) in message
    assert f"1 to {size}" in message
