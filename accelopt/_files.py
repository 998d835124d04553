"""Files named by users: read without blocking and checked after opening, written only where a
write can succeed, and every OS error one line that says what to fix.

A store, a task file or an output path comes from the command line or a shared file, so it may
be anything: a FIFO (opening one blocks until a writer comes), a device, a folder, a symlink
loop, a name longer than the file system allows. Checking with ``stat`` and then opening is
not enough: the path can be swapped between the two. So a file is opened first, without
blocking, and what was opened is checked (``fstat``).

>>> data = read_regular(Path("search_params.json"), "params store", 2**20)  # doctest: +SKIP
>>> check_output(Path("out.py"), "-o out.py", force=False)  # doctest: +SKIP
>>> write_output(Path("out.py"), "print(1)\\n", "-o out.py")  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from accelopt.errors import AccelOptError, printable

__all__ = ["check_output", "os_problem", "read_regular", "write_output"]

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once (Windows has none, nor FIFOs)
_OPEN = _NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_OPEN |= getattr(os, "O_BINARY", 0)
_NAME_MAX = 255  # bytes in one file name, where the file system does not say

# What an OS error on a path means to the person who typed it, and what to do about it.
_FIXES = {
    errno.ENAMETOOLONG: "give a shorter name",
    errno.ELOOP: "a symbolic link in the path loops; fix the link or give another path",
    errno.EISDIR: "it is a folder; name a file",
    errno.ENOTDIR: "a folder in the path is a file; give another path",
    errno.EEXIST: "a file is in the way of a folder the path needs; give another path",
    errno.ENOENT: "check the path",
    errno.EACCES: "give a path you have access to",
    errno.EPERM: "give a path you have access to",
    errno.EROFS: "give a path on a writable disk",
    errno.ENOSPC: "free some space or give a path on another disk",
    errno.EDQUOT: "free some space or give a path on another disk",
    errno.ENXIO: "it is a FIFO or a device no one is at; name a regular file",
}


def os_problem(err: OSError | RuntimeError) -> str:
    """``err`` in a few words, with what to do about it (Python 3.11's ``Path.resolve`` says a
    symlink loop with a RuntimeError).

    >>> os_problem(OSError(errno.ENAMETOOLONG, "File name too long"))
    'File name too long: give a shorter name'
    """
    if isinstance(err, RuntimeError):
        return f"Too many levels of symbolic links: {_FIXES[errno.ELOOP]}"
    what = err.strerror or type(err).__name__
    return f"{what}: {_FIXES.get(err.errno or 0, 'give another path')}"


def read_regular(path: Path, what: str, limit: int) -> bytes:
    """The bytes of ``path``, refused in one line unless what opens is a regular file of at
    most ``limit`` bytes. Opened without blocking and checked after opening (never
    stat-then-open): a FIFO or a device put there at any moment is refused, never read."""
    shown = printable(str(path), 200)
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN)
    except OSError as err:
        raise AccelOptError(f"{shown}: cannot read the {what}: {os_problem(err)}") from None
    except ValueError:
        raise _not_a_name(f"the {what} {shown}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AccelOptError(f"{shown} is not a regular file; give the {what}'s path")
        if info.st_size > limit:
            raise AccelOptError(
                f"{shown} is {info.st_size:,} bytes, over the {limit:,} a {what} may have"
            )
        chunks, size = [], 0
        while size <= limit:  # one byte past the limit tells a file that grew since fstat
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise AccelOptError(f"{shown}: cannot read the {what}: {os_problem(err)}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise AccelOptError(f"{shown} grew over the {limit:,} bytes a {what} may have")
    return b"".join(chunks)


def check_output(path: Path, shown: str, force: bool) -> None:
    """Refuse, before anything is written, an output that cannot be written at ``path``:
    ``shown`` names it as the user gave it (``-o out.py``, ``task 2's output x.py``). An
    existing file needs ``force``; a folder, a FIFO or a device is never overwritten; a path
    through a file, a symlink loop or a name too long for the file system is refused with
    what to fix. Folders that do not exist yet are fine (the write makes them)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        _check_new(path, shown)
        return
    except OSError as err:
        raise AccelOptError(f"cannot write {shown}: {os_problem(err)}") from None
    except ValueError:
        raise _not_a_name(shown) from None
    if stat.S_ISDIR(info.st_mode):
        raise AccelOptError(f"{shown} is a folder; name a file to write")
    if not stat.S_ISREG(info.st_mode):
        raise AccelOptError(f"{shown} is not a regular file (a FIFO, a socket or a device); "
                            f"name a file to write")  # fmt: skip
    if not force:
        raise AccelOptError(f"{shown} exists; pass --force to overwrite it")


def _not_a_name(shown: str) -> AccelOptError:
    """A path the OS cannot even be asked about (Python raises ValueError, not OSError)."""
    return AccelOptError(
        f"cannot use {shown}: not a name a file system takes (a NUL byte, or a character "
        f"with no encoding there); give another name"
    )


def _check_new(path: Path, shown: str) -> None:
    """A path that does not exist yet: the nearest folder above it that does must be a folder,
    and every name to be made must fit the file system's limit."""
    made = [path.name]
    folder = path.parent
    while True:
        try:
            info = os.stat(folder)
        except FileNotFoundError:
            if folder == folder.parent:
                break
            made.append(folder.name)
            folder = folder.parent
            continue
        except OSError as err:
            raise AccelOptError(f"cannot write {shown}: {os_problem(err)}") from None
        except ValueError:
            raise _not_a_name(shown) from None
        if not stat.S_ISDIR(info.st_mode):
            raise AccelOptError(f"cannot write {shown}: {printable(str(folder), 200)} is a file, "
                                f"not a folder; give another path")  # fmt: skip
        break
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer
        limit = _NAME_MAX
    for name in made:
        size = len(os.fsencode(name))
        if size > limit:
            raise AccelOptError(
                f"cannot write {shown}: the name {printable(name, 40)} is {size} bytes, over "
                f"the {limit} a file name may have there; give a shorter name"
            )


def write_output(path: Path, text: str, shown: str) -> None:
    """Write ``text`` to ``path`` (its folders made), in one line of error if the OS refuses.
    Opened without blocking and checked after opening: a FIFO or a device swapped in after
    ``check_output`` is refused, never written to (nor waited on)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | _OPEN, 0o666)
    except OSError as err:
        raise AccelOptError(f"cannot write {shown}: {os_problem(err)}") from None
    except ValueError:
        raise _not_a_name(shown) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AccelOptError(f"{shown} is not a regular file (a FIFO, a socket or a device); "
                                f"name a file to write")  # fmt: skip
        os.ftruncate(fd, 0)  # only now: truncating at open would empty a file refused here
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
    except OSError as err:
        raise AccelOptError(f"cannot write {shown}: {os_problem(err)}") from None
    finally:
        os.close(fd)
