"""bench.execution's block-cache plans: MagCache's ratios are measured on the plain pipeline
before timing, as a study measures them; other knobs pass through untouched."""

from __future__ import annotations

from accelopt import accelerators
from accelopt.testing import tiny_pipeline
from bench import execution


def test_plans_get_their_calibrated_knobs_measured_on_the_plain_pipeline() -> None:
    pipe = tiny_pipeline("TinyPixArt")
    generate = execution.generation(pipe, "TinyPixArt", batch=1)
    plans = {k: execution.PLANS[k] for k in ("magcache 0.06/3/0.2", "taylorseer 5/1/3")}
    got = {k: accelerators.calibrated(pipe, v, generate) for k, v in plans.items()}
    ratios = got["magcache 0.06/3/0.2"]["magcache"].pop("ratios")
    steps = execution.SETTINGS["TinyPixArt"][0]
    assert len(ratios) == steps and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert got == plans  # nothing else changed, TaylorSeer has nothing to calibrate


def test_every_plan_is_a_valid_configuration() -> None:
    """A misspelt knob would fail on the GPU, minutes into a lent call: each plan's configs
    build and pass their accelerator's range check here (steps as in SETTINGS)."""
    from accelopt import accelerators

    pixart = accelerators.PipeTraits("pixart-alpha", transformer_blocks=28)
    sd = accelerators.PipeTraits("sd", 3, (1, 2, 4))
    for configs in execution.PLANS.values():
        for name, knobs in configs.items():
            accel = accelerators.get(name)
            traits = pixart if "pixart-alpha" in accel.families else sd
            if accel.calibrated:  # measured on the GPU before timing: one ratio per call
                knobs = {**knobs, "ratios": [1.0] * 20}
            accel.check(accel.config(knobs), traits, 20)


def test_image_psnr_compares_decoded_images() -> None:
    import torch

    pipe = tiny_pipeline("TinyPixArt")
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 4, 4)
    assert execution.image_psnr(pipe, latents, latents) is None  # equal images: no finite PSNR
    value = execution.image_psnr(pipe, latents + 0.5, latents)
    assert value is not None and 0 < value < 100
    assert pipe.vae.dtype == torch.float32


def test_every_upstream_row_times_one_of_our_plans_upstream_has() -> None:
    """An --upstream row runs upstream's cache at one plan's settings: the plan exists and is
    one method that accelopt.testing.upstream can run raw (diffusers' hooks, cache-dit)."""
    from accelopt.testing.upstream import METHODS

    for label, ours in execution.UPSTREAM.items():
        ((name, _),) = execution.PLANS[ours].items()
        assert name in METHODS, label


def test_hooks_timed_counts_each_hook_call_and_changes_nothing() -> None:
    """FasterCache's halving and rebuild run in the transformer's forward hooks: one pre-hook
    and one hook per denoiser call. Timing them leaves the images and the hooks as they were."""
    import torch

    pipe = tiny_pipeline("TinyPixArt")
    generate = execution.generation(pipe, "TinyPixArt", batch=1)
    steps = execution.SETTINGS["TinyPixArt"][0]
    net = pipe.transformer
    with execution.hooks_timed(net) as spent:
        plain = generate()
    assert spent["calls"] == 0 and "device_seconds" not in spent  # the CPU: no CUDA events
    with accelerators.apply(pipe, execution.PLANS["fastercache 5/2"], steps=steps):
        hooks = (dict(net._forward_pre_hooks), dict(net._forward_hooks))
        untimed = generate()
        with execution.hooks_timed(net) as spent:
            timed = generate()
        assert (dict(net._forward_pre_hooks), dict(net._forward_hooks)) == hooks
    assert spent["calls"] == 2 * steps and spent["host_seconds"] > 0
    assert torch.equal(timed, untimed) and not torch.equal(timed, plain)
