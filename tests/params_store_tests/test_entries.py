"""Tests for accelopt/params_store/check.py: the one check of a store entry, hostile shapes
included."""

from __future__ import annotations

import random
from typing import Any

import pytest

from accelopt import accelerators
from accelopt.errors import AccelOptError
from accelopt.params_store.check import MAX_DEPTH, InvalidEntry, check_entry, usable_entries
from accelopt.testing import make_entry, tiny_pipeline


def refused(entry: dict[str, Any], key: str | None = None) -> str:
    with pytest.raises(InvalidEntry) as info:
        check_entry(entry["key"] if key is None else key, entry)
    return str(info.value)


# MagCache as export writes it: its knobs and the study's calibrated ratios, one per call.
MAGCACHE = {"threshold": 0.12, "max_skip_steps": 2, "retention_ratio": 0.2,
            "ratios": [1.0] + [0.98] * 24}  # fmt: skip
# DBCache as a study exports it: the searched knobs (no cap on the cached steps is searched).
DBCACHE = {"Fn_compute_blocks": 8, "Bn_compute_blocks": 8, "residual_diff_threshold": 0.12,
           "max_warmup_steps": 4, "max_continuous_cached_steps": 3}  # fmt: skip


def test_an_exported_entry_passes() -> None:
    for entry in (
        make_entry(),
        make_entry("TinySD", "DDIM", 10, {"tome": {"ratio": 0.5}}),
        make_entry("PixArt-Sigma", "DDIM", 25, {"magcache": MAGCACHE}),
        make_entry("PixArt-Sigma", "DDIM", 25, {"dbcache": DBCACHE}),
        make_entry(
            "PixArt-Sigma", "DDIM", 25, {"fbcache": {"threshold": 0.08}}, execution="compile"
        ),
    ):
        check_entry(entry["key"], entry)


def test_an_infinite_speedup_never_wins_a_request() -> None:
    entry = make_entry(speedup=float("inf"))
    assert refused(entry).endswith("measured.speedup: Input should be a finite number")


def test_the_pipeline_must_be_the_model_it_loads() -> None:
    entry = make_entry("TinySD")
    entry["model"] = "someone/other-model"
    message = refused(entry)
    assert "pipeline TinySD is not the model it loads (someone/other-model)" in message


@pytest.mark.parametrize(
    ("model", "accelerators_", "why"),
    [
        ("SDXL", {"tome": {"ratio": 0.5, "max_downsample": 1}}, "1 merges nothing"),
        ("TinySD", {"deepcache": {"cache_branch_id": 9}}, "valid: 0..8"),
        (
            "SD1.5",
            {"tgate": {"gate_step": 10, "scale": 2}},
            "unknown tgate parameter(s) scale",
        ),
        ("PixArt-Sigma", {"deepcache": {"cache_interval": 3}}, "deepcache cannot accelerate"),
        ("SDXL", {"tome": {"ratio": 0.5, "max_downsample": 2, "use_rand": 1}}, "must be bool"),
        ("SDXL", {"tomesd": {"ratio": 0.5}}, "unknown accelerator 'tomesd'"),
        ("SDXL", {"magcache": MAGCACHE}, "magcache cannot accelerate"),
        (
            "PixArt-Sigma",
            {"magcache": {**MAGCACHE, "ratios": [1.0] * 10}},
            "magcache.ratios has 10 entries; 25 steps make 25..59 denoiser calls",
        ),
        (
            "PixArt-Sigma",
            {"magcache": {**MAGCACHE, "ratios": [1.0] * 24 + [-0.5]}},
            "accelerators.magcache.ratios.24: Input should be greater than 0",
        ),
        (
            "PixArt-Sigma",
            {"magcache": {**MAGCACHE, "ratios": [1.0] * 24 + ["1.0"]}},
            "accelerators.magcache.ratios.24: Input should be a valid number",
        ),
        (
            "PixArt-Sigma",
            {"magcache": {**MAGCACHE, "ratios": []}},
            "accelerators.magcache.ratios: List should have at least 1 item",
        ),
        (
            "PixArt-Sigma",
            {"magcache": {k: v for k, v in MAGCACHE.items() if k != "ratios"}},
            "magcache needs calibrated ratios",
        ),
        ("PixArt-Sigma", {"taylorseer": {"modules": "attn"}}, "valid: attention, blocks"),
        (
            "PixArt-Sigma",
            {"tgate": {"gate_step": 10}, "taylorseer": {}},
            "tgate+taylorseer is not a declared combination; combinations: deepcache+tome",
        ),
        (
            "PixArt-Sigma",
            {"tgate": {"gate_step": 10}, "magcache": MAGCACHE},
            "tgate+magcache is not a declared combination; combinations: deepcache+tome",
        ),
        ("SDXL", {"dbcache": DBCACHE}, "dbcache cannot accelerate"),
        (  # PixArt-Sigma's 28 blocks: 8 last ones leave room for 19 first ones at most
            "PixArt-Sigma",
            {"dbcache": {**DBCACHE, "Fn_compute_blocks": 20}},
            "dbcache.Fn_compute_blocks=20 is out of range; valid: 1..19 (a middle block",
        ),
        (
            "PixArt-Sigma",
            {"dbcache": {**DBCACHE, "residual_diff_threshold": 1}},
            "dbcache.residual_diff_threshold=1 is out of range; valid: 0.0 up to 1.0 exclusive",
        ),
        (
            "PixArt-Sigma",
            {"dbcache": {**DBCACHE, "max_cached_steps": -2}},
            "dbcache.max_cached_steps=-2 is out of range; valid: -1..25 (-1: no cap)",
        ),
        ("PixArt-Sigma", {"fbcache": {"threshold": 2.0}}, "fbcache.threshold=2.0 is out of range"),
        (
            "PixArt-Sigma",
            {"fbcache": {"threshold": 0.08}, "dbcache": DBCACHE},
            "fbcache+dbcache is not a declared combination",
        ),
    ],
)
def test_settings_accelopt_refuses_are_never_used(
    model: str, accelerators_: dict[str, Any], why: str
) -> None:
    assert why in refused(make_entry(model, "DDIM", 25, accelerators_))


def test_a_named_knob_is_taken() -> None:
    taylorseer = {"taylorseer": {"cache_interval": 4, "max_order": 2, "modules": "blocks"}}
    check_entry(*_keyed(make_entry("PixArt-Sigma", "DPM-Solver++", 20, taylorseer)))


def test_a_random_partition_under_cuda_graphs_is_refused() -> None:
    tome = {"tome": {"ratio": 0.5, "max_downsample": 2, "use_rand": True}}
    assert "cannot run under execution mode cuda-graphs" in refused(
        make_entry("SDXL", "DDIM", 25, tome, execution="cuda-graphs")
    )
    check_entry(*_keyed(make_entry("SDXL", "DDIM", 25, tome)))


@pytest.mark.parametrize(
    "acc", [{"fbcache": {"threshold": 0.08}}, {"dbcache": DBCACHE}], ids=lambda a: next(iter(a))
)
def test_an_accelerator_its_mode_refuses_is_refused_by_name(
    acc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FirstBlockCache and DBCache run under cuda-graphs (a deciding call replays block by
    block): their entries pass; one a mode refuses (``execution.REFUSED``) is refused."""
    from accelopt import execution

    (name,) = acc
    entry = make_entry("PixArt-Sigma", "DDIM", 25, acc, execution="cuda-graphs")
    check_entry(entry["key"], entry)
    monkeypatch.setitem(execution.REFUSED, ("cuda-graphs", name), "a reason given here")
    assert f"{name} cannot run under execution mode cuda-graphs: a reason given here" in refused(
        entry
    )


def _keyed(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return entry["key"], entry


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda e: e.pop("measured"), "measured: Field required"),
        (lambda e: e.update(steps=True), "steps: Input should be a valid integer"),
        (lambda e: e.update(steps=10**4), "steps: Input should be less than or equal to 1000"),
        (lambda e: e.update(model=["x"]), "model: Input should be a valid string"),
        (lambda e: e["generation"].update(guidance="5"), "generation.guidance: Input should be"),
        (lambda e: e["measured"].update(device="\ud800"), "measured.device: Input should be"),
        (lambda e: e["study"].update(name="x" * 5000), "a string longer than 4096"),
        (lambda e: e.update(execution={"mode": "graphs\nimport os"}), "execution.mode: Input"),
        (lambda e: e.update(targets=["tgate", "deepcache"]), "targets must be sorted, each"),
        (lambda e: e.update(scheduler="LMS"), "unknown scheduler 'LMS'"),
        (
            lambda e: e["measured"].update(under_load=[{"cpu_share": "48%"}]),
            "measured.under_load.0.cpu_share: Input should be",
        ),
    ],
)
def test_wrong_shapes_are_named(change: Any, why: str) -> None:
    entry = make_entry()
    change(entry)
    assert why in refused(entry)


DC = {"cache_interval": 3, "cache_branch_id": 0}


@pytest.mark.parametrize(
    ("targets", "used", "why"),
    [
        (["deepcache", "tgate", "tome"], {}, "targets deepcache, tgate, tome but no "
         "accelerator in accelerators: its script would apply nothing"),
        ([], {"deepcache": DC}, "accelerators deepcache are not among its targets (none)"),
        (["deepcache"], {"deepcache": DC, "tome": {"ratio": 0.5}},
         "accelerators tome are not among its targets (deepcache)"),
    ],
    ids=["none-of-three", "no-targets", "one-outside"],
)  # fmt: skip
def test_targets_and_accelerators_must_agree(
    targets: list[str], used: dict[str, Any], why: str
) -> None:
    entry = make_entry("SDXL", "DDIM", 25, used)
    entry["targets"] = targets
    assert refused(entry) == f"store entry {entry['key']}: {why}"
    # Fewer than its targets is what export writes when a search found fewer faster.
    entry.update(targets=["deepcache", "tgate", "tome"], accelerators={"deepcache": DC})
    check_entry(entry["key"], entry)


def test_deep_nesting_is_refused_without_recursion() -> None:
    nested: Any = 3
    for _ in range(5000):  # a recursive walk would overflow Python's stack
        nested = {"k": nested}
    entry = make_entry()
    entry["accelerators"] = {"deepcache": {"cache_interval": nested}}
    assert f"nested deeper than {MAX_DEPTH} levels" in refused(entry)


def test_one_junk_entry_leaves_the_others_usable() -> None:
    good = make_entry()
    junk = make_entry("SDXL", "DDIM", 30, speedup=float("nan"))
    moved = make_entry("SDXL", "DDIM", 50)
    store = {good["key"]: good, junk["key"]: junk, "\x1b[2Jother": moved, "n": 3}
    usable, problems = usable_entries(store)
    assert list(usable) == [good["key"]]
    assert [k for k, _ in problems] == [junk["key"], "\\x1b[2Jother", "n"]
    assert "its own key is" in problems[1][1]
    assert problems[2][1] == "not an object but int"


def test_the_check_is_the_one_apply_makes() -> None:
    """On TinySD, random knobs pass check_entry exactly when accelerators.apply takes them."""
    pipe = tiny_pipeline("TinySD")
    rng = random.Random(0)
    agreed = {True: 0, False: 0}
    for _ in range(60):
        name = rng.choice(["deepcache", "tome", "tgate"])
        knobs = {
            "deepcache": {"cache_interval": rng.randint(0, 12),
                          "cache_branch_id": rng.randint(-1, 10)},
            "tome": {"ratio": rng.choice([0.0, 0.5, 0.8]),
                     "max_downsample": rng.choice([1, 3, 9])},
            "tgate": {"gate_step": rng.randint(0, 12), "warm_up": rng.randint(-1, 12)},
        }[name]  # fmt: skip
        entry = make_entry("TinySD", "DDIM", 10, {name: knobs})
        try:
            check_entry(entry["key"], entry)
            ok = True
        except InvalidEntry:
            ok = False
        try:
            accelerators.apply(pipe, {name: knobs}, steps=10).remove()
            applied = True
        except AccelOptError:
            applied = False
        assert ok == applied, (name, knobs)
        agreed[ok] += 1
    assert agreed[True] >= 10 and agreed[False] >= 10
