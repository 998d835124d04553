"""What the bench scripts share: the command that reran them, a record's header, a pipeline.

Every script that writes a record starts it with ``header``: the same fields computed the same
way (the card from ``accelopt.measure.environment.device_name``, package versions from
``package_versions``, the date, the command line), under the keys that script's records have
always used, so the stored records in bench/results/ and bench/landscapes/ stay readable by
bench/tables.py. Importing this module imports neither torch nor accelopt: ``bench.tables``
and the other writers of text stay light; the fields that need torch import it when asked.

    >>> command("speed", ["--pipes", "SD1.5", "--out", "$OUT"])
    'python -m bench.speed --pipes SD1.5 --out $OUT'
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["DAY", "MOMENT", "command", "driver", "git_commit", "header", "machine", "pipeline"]

DAY = "%Y-%m-%d"  # most records' "date"
MOMENT = "%Y-%m-%d %H:%M:%S %z"  # a landscape's "date": shards of one day are told apart


def command(script: str, argv: Sequence[str] | None = None, python: str = "python") -> str:
    """The command line that runs ``bench/<script>.py`` with ``argv`` (default: this process's).

    >>> command("landscape", ["summary", "bench/landscapes/SD1.5-DDIM-20.json"])
    'python -m bench.landscape summary bench/landscapes/SD1.5-DDIM-20.json'
    """
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([python, "-m", f"bench.{script}", *args])


def machine() -> str:
    """The CPU and its core count, e.g. ``"x86_64, 2 cores"``."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def git_commit() -> str | None:
    """The checked-out commit; None outside a git checkout."""
    return _first_line(["git", "rev-parse", "HEAD"])


def driver() -> str | None:
    """The NVIDIA driver of GPU 0; None without nvidia-smi."""
    return _first_line(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"]
    )


def header(
    *keys: str,
    script: str = "",
    argv: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    versions: Sequence[str] | None = None,
    date: str = DAY,
    python: str = "python",
) -> dict[str, Any]:
    """A record's header: ``keys`` in that order, each computed one way for every script.

    ``"device"`` and ``"card"`` (one value, two names the records use): ``device_name(device)``;
    ``"torch"``: torch's version; ``"versions"``: ``package_versions(versions)`` (None: the
    packages accelopt reports); ``"date"``: now, formatted by ``date``; ``"command"``:
    ``command(script, argv, python)``; ``"machine"`` and ``"python"``: the CPU and Python's
    version; ``"driver"`` and ``"git"``: the NVIDIA driver and the checked-out commit.

    >>> sorted(header("date", "command", "python", script="tables", argv=["x.json"]))
    ['command', 'date', 'python']
    """
    fields: dict[str, Callable[[], Any]] = {
        "device": lambda: _device_name(device),
        "card": lambda: _device_name(device),
        "torch": _torch_version,
        "versions": lambda: _versions(versions),
        "date": lambda: time.strftime(date),
        "command": lambda: command(script, argv, python),
        "machine": machine,
        "python": platform.python_version,
        "driver": driver,
        "git": git_commit,
    }
    if unknown := [k for k in keys if k not in fields]:
        raise ValueError(f"unknown header field {unknown[0]!r}; known: {', '.join(fields)}")
    return {k: fields[k]() for k in keys}


def pipeline(
    name: str,
    scheduler: str | None,
    *,
    weights: str = "random",
    dtype: str | None = None,
    device: str = "cpu",
    quiet: bool = True,
) -> Any:
    """``load_pipeline`` with the study's scheduler set and (``quiet``) no progress bars.

    ``scheduler`` None keeps the pipeline's own. Random weights by default: most benches time
    full-size architectures, whose real weights are not downloaded here.
    """
    from accelopt.pipelines import load_pipeline
    from accelopt.pipelines.schedulers import set_scheduler

    pipe = load_pipeline(name, weights=weights, dtype=dtype, device=device)  # type: ignore[arg-type]
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    if quiet:
        pipe.set_progress_bar_config(disable=True)
    return pipe


def _device_name(device: torch.device | str | None) -> str:
    import torch

    from accelopt.measure.environment import device_name

    if device is None:
        raise ValueError("a header with a device field needs device=")
    return device_name(torch.device(device))


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _versions(names: Sequence[str] | None) -> dict[str, str | None]:
    from accelopt.measure.environment import package_versions

    return package_versions() if names is None else package_versions(names)


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out.splitlines()[0] if out else None
