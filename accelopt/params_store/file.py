"""The params store: one JSON file of exported best configurations, shared by runs and codegen.

Format (``"version": 1``)::

    {"format": "accelopt-params-store", "version": 1,
     "entries": {"<seed key>": {entry}, ...}}

The key is the seed system's ``str((pipe, sched, str(steps), req_speedup, max_score_loss,
sorted(targets)))`` with its spellings (SD1.5, SD2.1, SDXL; DDIM, DPM-Solver++,
UniPCMultistepScheduler), so scripts written against the seed's ``search_params.json`` find entries
by the same string. A time requirement, which the seed's key has no slot for, adds a seventh
element ``('req_time', seconds)``; each fidelity bound of the study
(``accelopt.measure.constraints``) adds one more, ``('psnr_min', 30.0)``, so a study bounded by
PSNR never overwrites the entry of one that was not.

An entry exported from a pareto study (``objective = "pareto"``) is an ordinary entry (its own
configuration answers its key) with two more keys: ``"objective": "pareto"`` and ``"frontier"``,
every non-dominated trial of the study (or of its trials with that set of accelerators)::

    {"trial": 4, "accelerators": {...}, "params": {...},
     "measured": {"speedup", "time_per_image", "score", "score_loss", "peak_memory", "device"},
     "baseline": {"time_per_image": ...}, "heldout": null}

The keys are optional and the format stays version 1: a reader that does not know them uses the
entry's own configuration, which is still right for its key.

Writes take a file lock (``PATH.lock``, removed when released) and replace the file atomically
(temporary file + rename): concurrent exports lose nothing, a crash leaves the old file. A file
that is not a store (corrupt JSON, another program's JSON, a newer version) is refused and never
overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from accelopt._files import os_problem, read_regular
from accelopt.errors import AccelOptError, printable

__all__ = [
    "DEFAULT_STORE",
    "FORMAT",
    "VERSION",
    "locked",
    "read_json",
    "read_store",
    "replace_file",
    "seed_key",
    "seed_pipeline",
    "seed_scheduler",
    "store_entries",
    "store_path",
    "write_entries",
]

FORMAT = "accelopt-params-store"
VERSION = 1
DEFAULT_STORE = "search_params.json"
MAX_BYTES = 256 * 2**20  # a store of 100,000 frontier points is about 100 MB

T = TypeVar("T")

# Our names -> the seed system's spellings in keys (names it did not know stay ours).
_SEED_SCHEDULERS = {"UniPC": "UniPCMultistepScheduler"}


def store_path(path: str | os.PathLike[str] | None = None) -> Path:
    """``path``, else $ACCELOPT_STORE, else ./search_params.json."""
    return Path(path or os.environ.get("ACCELOPT_STORE") or DEFAULT_STORE)


def seed_pipeline(pipeline: str) -> str:
    """The short name of a known model (its hub id maps back to it); anything else as given."""
    from accelopt.pipelines import model_info

    info = model_info(pipeline)
    return info.name if info is not None else pipeline


def seed_scheduler(scheduler: str) -> str:
    from accelopt.pipelines.schedulers import resolve_scheduler

    name = resolve_scheduler(scheduler).name
    return _SEED_SCHEDULERS.get(name, name)


def seed_key(
    pipeline: str,
    scheduler: str,
    steps: int,
    targets: Iterable[str],
    max_score_loss: float,
    req_speedup: float | None = None,
    req_time: float | None = None,
    bounds: Mapping[str, float] | None = None,
) -> str:
    """The seed system's key string for an entry.

    >>> seed_key("stabilityai/stable-diffusion-xl-base-1.0", "ddim", 25, ["tgate", "tome"], 0.02)
    "('SDXL', 'DDIM', '25', None, 0.02, ['tgate', 'tome'])"
    """
    fields: tuple[Any, ...] = (
        seed_pipeline(pipeline),
        seed_scheduler(scheduler),
        str(steps),
        None if req_speedup is None else float(req_speedup),
        float(max_score_loss),
        sorted(targets),
    )
    if req_time is not None:
        fields += (("req_time", float(req_time)),)
    fields += tuple((k, float(v)) for k, v in (bounds or {}).items())
    return str(fields)


def read_json(path: Path, what: str = "params store", limit: int = MAX_BYTES) -> Any:
    """The JSON in ``path``, read as untrusted: opened without blocking and checked after
    opening (``accelopt._files.read_regular``: a regular file only, at most ``limit`` bytes; a
    FIFO swapped in at any moment neither hangs nor is read), any JSON error (digits past
    Python's limit and nesting past its recursion included) refused in one line."""
    shown = printable(str(path), 200)
    data = read_regular(path, what, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: JSON's, digits
        why = "nested too deep" if isinstance(err, RecursionError) else printable(err, 200)
        raise AccelOptError(
            f"{shown} is not a {what} (not valid JSON: {why}); left untouched, "
            f"pass --store to use another file"
        ) from None


def read_store(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of a store file ({} when it does not exist); refuses anything else.

    The entries are as stored: check them (``accelopt.params_store.check.usable_entries``) before
    use."""
    if not os.path.lexists(path):
        return {}
    return store_entries(path, read_json(path))


def store_entries(path: Path, data: Any) -> dict[str, dict[str, Any]]:
    """The entries of ``data``, the JSON read from the store file ``path`` (read once: what
    was checked is what is used); refuses anything but a store of this version."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AccelOptError(
            f'{path} is not an accelopt params store (no "format": "{FORMAT}"); left '
            f"untouched, pass --store to use another file"
        )
    if data.get("version") != VERSION:
        raise AccelOptError(
            f"{path} is params store version {data.get('version')!r}; this accelopt reads "
            f"version {VERSION} only; left untouched"
        )
    if not isinstance(data.get("entries"), dict):
        raise AccelOptError(
            f'{path} is a broken params store ("entries" is not an object); left untouched'
        )
    entries: dict[str, dict[str, Any]] = data["entries"]
    return entries


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_entries(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Add or replace ``entries`` under the lock, then swap the file in atomically."""
    with locked(path):
        merged = {**read_store(path), **entries}
        text = json.dumps(
            {"format": FORMAT, "version": VERSION, "entries": dict(sorted(merged.items()))},
            indent=2,
            allow_nan=False,
        )
        replace_file(path, text + "\n")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock file (``PATH.lock``) inside the block: one writer at a time. The
    lock file is gone again when the block ends.

    Removing a lock file is safe only where every writer, once it holds the lock, checks that
    the file it locked is still the one at ``PATH.lock``: a writer that waited on a file since
    removed would otherwise hold its lock beside a newcomer that locked a fresh file, and both
    would write. filelock's FileLock leaves its file for that reason (filelock 3 does not check),
    so the lock is taken here with that check (``flock``), and released by removing the file
    while still holding it. Where there is no ``flock`` (Windows) it is filelock's, and stays.
    """
    lock = Path(f"{path}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        from filelock import FileLock

        with FileLock(str(lock)):
            yield
        return
    while True:
        fd = _open_lock(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _names(lock, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked after its holder removed it: lock the file there now
    try:
        yield
    finally:
        try:
            if _names(lock, fd):  # only the file we locked: anything else there is not ours
                lock.unlink()
        finally:
            os.close(fd)  # and unlocks it


def _open_lock(lock: Path) -> int:
    """``lock`` opened (made if missing), refused in one line unless it is a regular file: the
    lock file is ours, so a symlink there is not followed (O_NOFOLLOW), and a FIFO put there is
    opened without blocking and refused after opening."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    shown = printable(str(lock), 200)
    try:
        fd = os.open(lock, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        problem = os_problem(err)
        if err.errno == errno.ELOOP:  # O_NOFOLLOW's answer for a symlink
            problem = "it is a symbolic link (or its path loops); remove it"
        raise AccelOptError(f"cannot open the store's lock file {shown}: {problem}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AccelOptError(f"{shown} is not a regular file; remove it (it is the store's lock)")
    return fd


def _names(lock: Path, fd: int) -> bool:
    """Whether ``lock`` is the file open as ``fd`` (not removed, not replaced)."""
    try:
        return os.path.samestat(os.fstat(fd), lock.stat())
    except FileNotFoundError:
        return False


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: a reader
    sees the old file or the new one, never half of either; a crash leaves the old one."""
    # The name cut short: a store's name near the file system's limit leaves no room for more.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a shared store keeps its mode (or gets the umask's).
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
