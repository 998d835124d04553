"""Execution modes (accelopt/execution.py): refusals as data, and the compile mode on the CPU.

Inductor compiles C++ on the CPU, about a minute per graph on two cores from a cold cache, so
the compiled checks share one module fixture and few graphs: the plain UNet, DeepCache's full
and shallow step at branch 0, and T-GATE's gate step and halved steps. CUDA graphs are
GPU-only: tests/features/test_gpu.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from accelopt import accelerators, execution
from accelopt._types import Pipeline
from accelopt.accelerators import DeepCacheConfig, PABConfig, TaylorSeerConfig, TGateConfig
from accelopt.cli import main
from accelopt.errors import AccelOptError
from accelopt.portable.graphs import REGIONS
from accelopt.testing import render, tiny_pipeline
from accelopt.trial.space import Space

STEPS = 4
# Largest pixel difference of a compiled generation against eager on TinySD, float32 on the
# CPU: measured 1.5e-6 to 2.3e-6 (inductor fuses and reorders float reductions).
COMPILE_TOLERANCE = 1e-4


def test_unknown_modes_and_devices_are_refused_with_the_choices() -> None:
    with pytest.raises(AccelOptError, match="valid: eager, compile, cuda-graphs"):
        execution.check("graphs")
    with pytest.raises(AccelOptError, match="needs a CUDA device, not cpu"):
        execution.check("cuda-graphs", device="cpu")
    assert execution.check("compile", ["deepcache", "tome"], "cpu") == "compile"


@pytest.fixture
def tome_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A declared refusal (none is declared today): ToMe under both graph modes."""
    for mode in ("compile", "cuda-graphs"):
        monkeypatch.setitem(execution.REFUSED, (mode, "tome"), "a reason given here")


@pytest.mark.usefixtures("tome_refused")
def test_a_declared_refusal_names_its_reason() -> None:
    for mode in ("compile", "cuda-graphs"):
        with pytest.raises(
            AccelOptError,
            match=f"tome cannot run under execution mode {mode}: a reason given here; use "
            "--execution eager",
        ):
            execution.check(mode, ["deepcache", "tome"])
        assert execution.allowed(mode, ["deepcache", "tome", "tgate"]) == ("deepcache", "tgate")
    assert execution.allowed("eager", ["tome"]) == ("tome",)


def test_every_method_runs_under_every_mode() -> None:
    """FirstBlockCache and DBCache, which read a device value mid-forward, too: under
    cuda-graphs their deciding calls replay block by block (tests/accelerators_tests/
    test_dbcache.py)."""
    assert execution.REFUSED == {}
    for mode in execution.MODES:
        assert execution.allowed(mode, accelerators.ORDER) == accelerators.ORDER
        execution.check(mode, accelerators.ORDER)


@pytest.mark.usefixtures("tome_refused")
def test_a_searched_space_leaves_out_what_the_mode_cannot_run() -> None:
    traits = accelerators.PipeTraits.of(tiny_pipeline("TinySD"))
    eager = Space.build(traits, 10, None, "eager")
    compiled = Space.build(traits, 10, None, "compile")
    assert {k.split(".")[0] for k in eager.params} == {"deepcache", "tome", "tgate"}
    assert {k.split(".")[0] for k in compiled.params} == {"deepcache", "tgate"}
    with pytest.raises(AccelOptError, match="tome cannot run under execution mode compile"):
        Space.build(traits, 10, ("tome",), "compile")


def test_modes_measured_at_a_study_start() -> None:
    assert execution.modes_to_measure("auto", "cuda:0") == execution.MODES
    assert execution.modes_to_measure("auto", "cpu") == ("eager",)
    assert execution.modes_to_measure("compile", "cpu") == ("eager", "compile")


@pytest.mark.usefixtures("tome_refused")
def test_cli_refuses_a_mode_the_machine_or_targets_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    code = main(["run", "--study", "TinySD-DDIM-10-tome", "--execution", "compile",
                 "--storage", storage, "--quiet"])  # fmt: skip
    assert code == 2
    assert "tome cannot run under execution mode compile" in capsys.readouterr().err
    code = main(["run", "--study", "TinySD-DDIM-10", "--execution", "cuda-graphs",
                 "--device", "cpu", "--storage", storage, "--quiet"])  # fmt: skip
    assert code == 2
    assert "cuda-graphs needs a CUDA device, not cpu" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()  # refused before a study nothing could run was made


def test_a_patched_forward_is_refused_not_overwritten() -> None:
    pipe = tiny_pipeline("TinySD")
    pipe.unet.forward = pipe.unet.forward  # an instance attribute, as upstream DeepCache leaves
    with pytest.raises(AccelOptError, match="forward is patched"), execution.run(pipe, "compile"):
        pass
    assert "forward" in vars(pipe.unet)


def test_eager_kernels_are_not_a_compile_choice() -> None:
    pipe = tiny_pipeline("TinySD")
    refused = pytest.raises(AccelOptError, match="not compile's")
    with refused, execution.run(pipe, "compile", kernels="eager"):
        pass
    assert "forward" not in vars(pipe.unet)


@pytest.fixture(scope="module")
def compiled() -> Iterator[tuple[Pipeline, np.ndarray, np.ndarray]]:
    pipe = tiny_pipeline("TinySD")
    eager = render(pipe, steps=STEPS)
    with execution.run(pipe, "compile"):
        baseline = render(pipe, steps=STEPS)
    yield pipe, eager, baseline


def test_compiled_baseline_is_eager_within_tolerance_and_repeats(
    compiled: tuple[Pipeline, np.ndarray, np.ndarray],
) -> None:
    pipe, eager, baseline = compiled
    assert float(np.abs(baseline - eager).max()) < COMPILE_TOLERANCE
    before = execution.graph_count()
    with execution.run(pipe, "compile") as record:
        np.testing.assert_array_equal(render(pipe, steps=STEPS), baseline)
    assert (
        execution.graph_count() == before
    )  # the plain graph is kept on the UNet, not compiled again
    assert record.compiles >= 1 and record.seconds > 0
    assert "forward" not in vars(pipe.unet)  # leaving the mode restores the module
    np.testing.assert_array_equal(render(pipe, steps=STEPS), eager)


def test_deepcache_compiles_once_per_structure_and_removes_exactly(
    compiled: tuple[Pipeline, np.ndarray, np.ndarray],
) -> None:
    pipe, _, baseline = compiled
    results, made, told = {}, [], []
    for interval in (3, 2, 3):
        config = {"deepcache": DeepCacheConfig(cache_interval=interval, cache_branch_id=0)}
        with accelerators.apply(pipe, config, steps=STEPS):
            eager = render(pipe, steps=STEPS)
            before = execution.graph_count()
            with execution.run(pipe, "compile", told.append):
                results[interval] = render(pipe, steps=STEPS)
            made.append(execution.graph_count() - before)
        assert float(np.abs(results[interval] - eager).max()) < COMPILE_TOLERANCE
        assert not np.array_equal(results[interval], baseline)
    # Branch 0's full and shallow steps are two graphs, made once: intervals only pick.
    assert made == [2, 0, 0]
    assert told == ["deepcache 0 full", "deepcache 0 shallow"]  # what a progress bar shows
    off = {"deepcache": accelerators.get("deepcache").off(STEPS)}
    with accelerators.apply(pipe, off, steps=STEPS), execution.run(pipe, "compile"):
        np.testing.assert_array_equal(render(pipe, steps=STEPS), baseline)
    with execution.run(pipe, "compile"):
        np.testing.assert_array_equal(render(pipe, steps=STEPS), baseline)


def test_tgate_compiles_once_per_structure_and_off_reproduces_the_baseline(
    compiled: tuple[Pipeline, np.ndarray, np.ndarray],
) -> None:
    """Gate 2 of 4 steps: a guided step, the gate's step that keeps attention, and two halved
    steps that reuse cross-attention: three graphs, made once, none for the off settings."""
    pipe, _, baseline = compiled
    config = {"tgate": TGateConfig(gate_step=2, sp_interval=2, fi_interval=1, warm_up=1)}
    told: list[str] = []
    with accelerators.apply(pipe, config, steps=STEPS):
        eager = render(pipe, steps=STEPS)
        before = execution.graph_count()
        with execution.run(pipe, "compile", told.append):
            gated = render(pipe, steps=STEPS)
            made = execution.graph_count() - before
            np.testing.assert_array_equal(render(pipe, steps=STEPS), gated)
    assert float(np.abs(gated - eager).max()) < COMPILE_TOLERANCE
    assert not np.array_equal(gated, baseline)
    assert told == [
        "tgate guided shallow compute compute",
        "tgate guided shallow keep-mean keep-mean",
        "tgate halved shallow reuse keep",
    ]
    assert made == 3
    before = execution.graph_count()
    off = {"tgate": accelerators.get("tgate").off(STEPS)}
    with accelerators.apply(pipe, off, steps=STEPS), execution.run(pipe, "compile"):
        np.testing.assert_array_equal(render(pipe, steps=STEPS), baseline)
    assert execution.graph_count() == before
    with execution.run(pipe, "compile"):
        np.testing.assert_array_equal(render(pipe, steps=STEPS), baseline)


def test_regional_kernels_compile_blocks_once_and_leave_no_trace() -> None:
    """Regional kernels on TinySD, dynamo's "eager" backend (no C++ compiler): every repeated
    block runs compiled, the images are eager's bit for bit, the whole forward is never
    compiled, a new DeepCache interval costs no graph and a new branch fewer than a tenth of
    the first structure's, and leaving the mode puts every block's call back."""
    pipe = tiny_pipeline("TinySD")
    net = pipe.unet
    blocks = [m for m in net.modules() if type(m).__name__ in REGIONS]
    made = []
    for interval, branch in ((3, 0), (2, 0), (3, 1)):
        config = {"deepcache": DeepCacheConfig(cache_interval=interval, cache_branch_id=branch)}
        with accelerators.apply(pipe, config, steps=STEPS):
            eager = render(pipe, steps=STEPS)
            before = execution.graph_count()
            with execution.run(pipe, "compile", kernels="regional", backend="eager") as record:
                assert all(m._compiled_call_impl is not None for m in blocks)
                np.testing.assert_array_equal(render(pipe, steps=STEPS), eager)
            made.append(execution.graph_count() - before)
    assert record.forward is None  # the whole forward: never compiled
    assert made[0] > 0 and made[1] == 0 and 10 * made[2] < made[0], made
    assert all(m._compiled_call_impl is None for m in net.modules())
    assert "forward" not in vars(net)


def test_tgate_modes_choose_outside_regional_blocks_and_new_modes_compile_nothing() -> None:
    """T-GATE under regional kernels on TinySD (dynamo's "eager" backend): each attention's
    mode is chosen outside the compiled blocks, so a configuration whose steps meet modes the
    first never did (keep before the gate) compiles no graph; images are eager's bit for bit,
    and leaving the mode puts T-GATE's own attention forwards back."""
    pipe = tiny_pipeline("TinySD")
    attention = [m for m in pipe.unet.modules() if type(m).__name__ == "Attention"]
    made, told = [], []
    for config in (TGateConfig(2, 2, 1, 1), TGateConfig(3, 1, 1, 0)):
        with accelerators.apply(pipe, {"tgate": config}, steps=STEPS):
            gated = [vars(m)["forward"] for m in attention]
            eager = render(pipe, steps=STEPS)
            before = execution.graph_count()
            with execution.run(pipe, "compile", told.append, kernels="regional", backend="eager"):
                np.testing.assert_array_equal(render(pipe, steps=STEPS), eager)
            made.append(execution.graph_count() - before)
            assert [vars(m)["forward"] for m in attention] == gated
    assert made[0] > 0 and made[1] == 0, made
    assert "tgate guided shallow compute keep" in told  # a structure the first never met


def test_kernels_follow_the_mode_and_whether_the_pipeline_is_accelerated() -> None:
    assert execution.kernels_for("cuda-graphs", accelerated=True) == "regional"
    assert execution.kernels_for("cuda-graphs", accelerated=False) == "inductor"  # the baseline
    assert execution.kernels_for("compile", accelerated=True) == "inductor"
    assert execution.kernels_for("eager", accelerated=True) == "eager"
    refused = pytest.raises(AccelOptError, match="unknown kernels 'fast'; valid: inductor, reg")
    with refused, execution.run(tiny_pipeline("TinySD"), "compile", kernels="fast"):
        pass


# What compiling costs, per structure: execution's bookkeeping driven by a fake forward, a
# fake graph counter and a fake clock (compiling anything real takes minutes here).


class _Acc:
    """An applied accelerator as ``_counting`` sees it: its structure now."""

    def __init__(self) -> None:
        self.now: tuple[tuple[object, ...], ...] = ()

    def structure(self) -> tuple[tuple[object, ...], ...]:
        return self.now


def test_each_structure_is_timed_and_told_once_with_its_cost() -> None:
    import torch

    acc, clock, graphs, told = _Acc(), [0.0], [0], []
    shallow = (("deepcache", 0, "shallow"),)
    # What each call "compiles" by (structure, batch): (graphs made, seconds); else a replay.
    makes: dict[tuple[object, int], tuple[int, float]] = {
        (shallow, 2): (2, 7.5),
        ((), 2): (1, 3.0),
        (shallow, 1): (1, 1.5),
    }
    again = [(shallow, 2)]  # a guard fails: dynamo compiles a seen key once more

    def forward(x: torch.Tensor) -> torch.Tensor:
        made, took = makes.pop((acc.now, len(x)), (0, 0.25))  # a replay also takes time
        if (made, took) == (0, 0.25) and (acc.now, len(x)) in again:
            again.remove((acc.now, len(x)))
            made, took = 1, 2.0
        graphs[0] += made
        clock[0] += took
        return x

    record = execution.Compiled()
    call = execution._counting(
        record, forward, acc,
        execution._Told(lambda what: told.append(f"compiling {what}"),
                        lambda what, s: told.append(f"compiled {what} in {s:.1f} s")),
        graph_count=lambda: graphs[0], clock=lambda: clock[0],
    )  # fmt: skip
    acc.now = shallow
    call(torch.zeros(2, 3))
    call(torch.zeros(2, 3))  # seen, and compiled again
    call(torch.zeros(2, 3))  # seen: a replay, no word, no cost
    acc.now = ()
    call(torch.zeros(2, 3))
    acc.now = shallow
    call(torch.zeros(1, 3))  # the same structure at another batch: a key of its own
    assert told == [
        "compiling deepcache 0 shallow", "compiled deepcache 0 shallow in 7.5 s",
        "compiled deepcache 0 shallow in 2.0 s",  # no word before: it was no new key
        "compiling plain", "compiled plain in 3.0 s",
        "compiling deepcache 0 shallow", "compiled deepcache 0 shallow in 1.5 s",
    ]  # fmt: skip
    costs = list(record.costs.values())
    assert [(c.structure, c.seconds, c.graphs) for c in costs] == [
        ("deepcache 0 shallow", 9.5, 3), ("plain", 3.0, 1), ("deepcache 0 shallow", 1.5, 1)
    ]  # fmt: skip
    assert (record.compiles, record.seconds) == (5, 14.0)  # the replays' seconds are not in it
    assert execution.by_structure(costs) == [
        {"structure": "deepcache 0 shallow", "seconds": 11.0, "graphs": 4},
        {"structure": "plain", "seconds": 3.0, "graphs": 1},
    ]


def _compiled_call(builtin: object) -> None:
    """A call dynamo compiles (no inductor: seconds) that meets a builtin it cannot trace, so
    it warns (``torch._dynamo.utils.warn_once``), once per builtin in a process."""
    import torch

    def f(x: torch.Tensor) -> torch.Tensor:
        return x + builtin(b"x")  # type: ignore[operator]

    torch.compile(f, backend="eager")(torch.ones(2))


def test_dynamo_warnings_stay_off_the_terminal_unless_asked_for() -> None:
    import warnings
    import zlib

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        with execution.quiet_dynamo():
            _compiled_call(zlib.crc32)
            warnings.warn("the user's own", UserWarning, stacklevel=1)  # still shows
        with execution.quiet_dynamo(quiet=False):
            _compiled_call(zlib.adler32)
    said = [str(w.message).split(".")[0] for w in got]
    assert said == ["the user's own", "Dynamo does not know how to trace the builtin `zlib"]
    assert "adler32" in str(got[1].message)

    asked = execution.dynamo_warnings_asked
    assert not asked({}) and not asked({"ACCELOPT_DYNAMO_WARNINGS": "0"})
    assert asked({"ACCELOPT_DYNAMO_WARNINGS": "1"}) and asked({"TORCH_LOGS": "graph_breaks"})


def test_inductor_kernels_live_in_one_cache_per_host_and_user(tmp_path: Path) -> None:
    assert execution.cache_home({"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "accelopt" / "inductor"
    )
    assert execution.cache_home({}) == Path.home() / ".cache" / "accelopt" / "inductor"
    # Importing torch writes its own default into the environment: that is no user's choice
    # (on a GPU study the kernels went there, not to accelopt's cache, until this was read).
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    ours = tmp_path / "accelopt" / "inductor"
    for before in ({}, {"TORCHINDUCTOR_CACHE_DIR": default_cache_dir()}):
        env = {"XDG_CACHE_HOME": str(tmp_path), **before}
        assert execution.use_cache_dir(env=env) == ours and ours.is_dir()
        assert env["TORCHINDUCTOR_CACHE_DIR"] == str(ours)
    mine = {"XDG_CACHE_HOME": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine")}
    assert execution.use_cache_dir(env=mine) == tmp_path / "mine"
    assert mine["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_release_frees_other_methods_buffers_and_the_graphs_that_read_them(
    tiny: Callable[[str], Pipeline],
) -> None:
    """What a study of groups does when a trial draws another group: the other methods' buffers
    go, with every graph of a structure naming them (a captured graph reads its method's
    buffers at fixed addresses; CUDA graphs are injected here as keys); the kept method's and
    the plain pipeline's stay, and a released method applied again computes the same images."""
    import gc
    import weakref

    from accelopt.accelerators._base import kept
    from accelopt.portable.graphs import Graph

    pipe = tiny("TinyPixArt")
    configs = {"taylorseer": {"taylorseer": TaylorSeerConfig(2, 1, 1)},
               "pab": {"pab": PABConfig(spatial_attention_block_skip_range=2)}}  # fmt: skip
    first = {}
    for name, config in configs.items():
        with accelerators.apply(pipe, config, steps=STEPS):
            first[name] = render(pipe, steps=STEPS)
    net = pipe.transformer
    seer, pab = weakref.ref(kept(net, "taylorseer")), kept(net, "pab")
    assert seer().saved and pab.saved  # type: ignore[union-attr]
    keys = {
        name: ((structure,) if structure else (), "spec", ())
        for name, structure in (("plain", None), ("taylorseer", ("taylorseer", "blocks", 1)),
                                ("pab", ("pab", "reuse", "compute")))
    }  # fmt: skip
    record = execution.compile_stats(pipe)
    graphs = record.graphs.setdefault("regional", {})
    try:
        graphs.update({key: Graph(None, [], None) for key in keys.values()})
        record.costs[keys["taylorseer"]] = execution.Cost("taylorseer blocks 1", 1.0, 1)

        assert execution.release(pipe, keep=("pab",)) == ("taylorseer",)
        gc.collect()
        assert seer() is None and kept(net, "pab") is pab
        assert keys["taylorseer"] not in graphs and keys["taylorseer"] not in record.costs
        assert {keys["plain"], keys["pab"]} <= set(graphs)
        assert execution.release(pipe, keep=("pab",)) == ()
    finally:
        for key in keys.values():
            graphs.pop(key, None)
    with accelerators.apply(pipe, configs["taylorseer"], steps=STEPS):
        np.testing.assert_array_equal(render(pipe, steps=STEPS), first["taylorseer"])


def test_a_compiled_pipeline_dropped_takes_its_compiled_code_with_it() -> None:
    """What a denoiser compiled lives as long as the denoiser, across removals (the next trial
    reuses it), not as long as the process: a study's pipeline, its graphs and its caches'
    buffers must go before an export or the next study of a sweep loads another. Last in this
    file: a denoiser freed lets a later one reuse its blocks' graphs, which the graph counts of
    the tests above would see."""
    import gc
    import weakref

    pipe = tiny_pipeline("TinySD")
    config = {"deepcache": DeepCacheConfig(2, 0)}
    for _ in range(2):
        with (
            accelerators.apply(pipe, config, steps=4),
            execution.run(pipe, "compile", kernels="regional", backend="eager") as record,
        ):
            render(pipe, steps=4, prompts=("a red cube", "a blue ball"))
    assert execution.compile_stats(pipe) is record and record.regions  # kept across removals
    net = weakref.ref(pipe.unet)
    del pipe, record
    gc.collect()
    assert net() is None
