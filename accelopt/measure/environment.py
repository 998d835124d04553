"""Where a number was measured: the installed package versions and the device's name.

>>> package_versions(["accelopt"])["accelopt"]  # doctest: +SKIP
'0.1.0'
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import torch

__all__ = ["PACKAGES", "device_name", "package_versions"]

PACKAGES = ("accelopt", "torch", "diffusers", "transformers", "DeepCache", "tgate", "tomesd",
            "open_clip_torch", "optuna")  # fmt: skip


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None for a package that is not installed)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def device_name(device: torch.device) -> str:
    """The card's name on CUDA; elsewhere the device type and the threads torch uses."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"{device.type} ({torch.get_num_threads()} threads)"
