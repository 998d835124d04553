"""Fuzz the storage's faults through the CLI: mutated journals, credential URLs, SQLite names.

    python -m bench.fuzz_storage --cases 2000 --seed 3401 [--part journal url sqlite]

Every case runs commands in process (``accelopt.cli.main(argv)``, as a user's shell would run
them, with stdout and stderr caught at the file descriptors) in a scratch folder, from a
seeded random generator (``random.Random(seed)``: the same seed, the same cases).

- **journal**: the journal of a real study (``accelopt run --study TinySD-DDIM-10`` on the
  CPU, made once here; ``--journal`` gives another), mutated 1 to 3 times per case: lines
  deleted (any, or those of one operation: a trial's creation, a user attribute, its end),
  op codes changed (to another operation, out of range, a string, a bool, a float), fields
  dropped or given another type, ids out of range, NaN and Infinity, lines cut (with and
  without their newline, or merged with the next), bytes that are no UTF-8, a line in
  Latin-1, the whole file in UTF-16, a byte order mark, lines duplicated or swapped, blank
  lines, deep nesting, lone surrogates, CRLF. Then three of ``best``, ``best --json``,
  ``list``, ``report --images 0`` and ``export --top-k 0`` read it, ``storage repair``
  repairs it and ``best`` reads it again. A case fails on a traceback,
  a hang, an exit code other than 0, 1 or 2, a repair that leaves a journal no reader takes,
  or a refused repair that changed the file.
- **url**: generated credential forms (a password in the user info, in a query parameter of
  any credential name, in the port, after a second "@", with "@", "#", "&", "?", "/", ":",
  "%", "=" and spaces inside, percent-encoded, with whitespace around the URL, a missing colon
  or slash after the scheme, nested in dbname, IPv6 and several hosts) on several schemes and
  drivers, each given to ``run``, ``worker``, ``best``, ``list``, ``export``, ``report`` and
  ``dashboard`` (its server stubbed), and to ``storage repair``. A case fails on a traceback,
  a hang, or any 4-character run of the password's letters in the output.
- **sqlite**: generated spellings of one SQLite file (relative and absolute paths, ``./``,
  ``..``, doubled slashes, a symbolic link to its folder or to it, a hard link, ``file:`` URIs
  with ``uri=true``, percent-escapes, query parameters, ``FILE:``, a fragment, a driver name)
  and of databases in memory. Each must resolve (``accelopt.storage.sqlite_database``) to the
  file SQLite itself opens for it (``PRAGMA database_list`` through SQLAlchemy), and
  ``accelopt run`` on it must be refused while another spelling holds the writer lock.

Prints the counts per part and the first failures; exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import string
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

STUDY = "TinySD-DDIM-10"


class Hang(BaseException):
    """A command ran past its deadline (a BaseException: nothing in the CLI catches it)."""


@dataclass
class Tally:
    cases: int = 0
    commands: int = 0
    failures: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def hang(signum: int, frame: object) -> None:
        raise Hang()

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cli(argv: Sequence[str], timeout: float) -> tuple[int | str, str]:
    """``accelopt ARGV`` in this process: its exit code (or "hang", "raised NAME") and all it
    wrote, caught at the descriptors 1 and 2 (loggers and warnings too) and at sys.stdout and
    sys.stderr (which a test runner may have swapped for its own)."""
    from accelopt.cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    code: int | str
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 1)
        os.dup2(caught.fileno(), 2)
        text = open(os.dup(caught.fileno()), "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        try:
            with _deadline(timeout), contextlib.redirect_stdout(text), \
                    contextlib.redirect_stderr(text):  # fmt: skip
                try:
                    code = main(list(argv))
                except SystemExit as stop:  # argparse
                    code = stop.code if isinstance(stop.code, int) else 2
                except Hang:
                    code = "hang"
                except BaseException as err:  # a traceback: what the fuzz looks for
                    code = f"raised {type(err).__name__}"
                    traceback.print_exc()
        except Hang:  # past the deadline as it ended
            code = "hang"
        finally:
            text.close()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        caught.seek(0)
        return code, caught.read().decode("utf-8", "replace")


def _bad(code: int | str, out: str) -> str | None:
    """Why a command's ending is a failure of the fuzz, else None."""
    if not isinstance(code, int):
        return str(code)
    if code not in (0, 1, 2):
        return f"exit code {code}"
    if "Traceback" in out:
        return "a traceback in the output"
    return None


# Journals.

NUMBERS: list[Any] = [None, True, False, "x", "", -1, 0, 1, 2.5, 10**30, [], {}, [1], {"a": 1}]
SPECIAL = ["NaN", "Infinity", "-Infinity", "1e999", "-0.0", "1" + "0" * 5000]
OPS: list[Any] = [-1, 11, 99, 2**63, "4", "6", 4.0, 6.5, True, False, None, [], *range(11)]


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _pick(rng: random.Random, lines: list[bytes], want: Callable[[dict[str, Any]], bool]) -> int:
    found = [i for i, line in enumerate(lines) if (r := _record(line)) is not None and want(r)]
    return rng.choice(found) if found else rng.randrange(len(lines))


def _with_raw(record: dict[str, Any], key: str, raw: str) -> bytes:
    """``record`` with ``key`` set to the JSON text ``raw`` (NaN, Infinity, huge numbers)."""
    marker = "\u0000fuzz\u0000"
    record = {**record, key: marker}
    return _dump(record).replace(json.dumps(marker).encode(), raw.encode())


def mutate(rng: random.Random, lines: list[bytes]) -> tuple[list[bytes], str]:
    """One mutation of a journal's lines; returns the lines and what was done."""
    lines = list(lines)
    kind = rng.choice(
        ["delete", "delete_op", "delete_op", "op_code", "drop_field", "retype", "nan",
         "truncate", "merge", "bytes", "latin1", "utf16", "bom", "dup", "swap", "blank",
         "deep", "ids", "attr", "surrogate", "crlf", "no_newline", "distribution"]
    )  # fmt: skip
    if not lines:
        return [b"{}\n"], "empty file"
    i = rng.randrange(len(lines))
    record = _record(lines[i]) or {}
    if kind == "delete":
        del lines[i]
    elif kind == "delete_op":
        op = rng.choice([0, 2, 4, 4, 5, 6, 8, 8, 8])
        del lines[_pick(rng, lines, lambda r: r.get("op_code") == op)]
    elif kind == "op_code":
        lines[i] = _dump({**record, "op_code": rng.choice(OPS)})
    elif kind == "drop_field" and record:
        key = rng.choice(sorted(record))
        lines[i] = _dump({k: v for k, v in record.items() if k != key})
        kind += f" {key}"
    elif kind == "retype" and record:
        key = rng.choice(sorted(record))
        lines[i] = _dump({**record, key: rng.choice(NUMBERS)})
        kind += f" {key}"
    elif kind == "nan":
        i = _pick(rng, lines, lambda r: r.get("op_code") in (5, 6, 7, 8))
        record = _record(lines[i]) or {}
        key = {5: "param_value_internal", 6: "values", 7: "intermediate_value"}.get(
            record.get("op_code", 0), "user_attr"
        )
        raw = rng.choice(SPECIAL)
        if key == "values":
            raw = f"[{raw}]"
        elif key == "user_attr":
            name = next(iter(record.get("user_attr") or {"speedup": 0}))
            raw = f'{{"{name}":{raw}}}'
        lines[i] = _with_raw(record, key, raw)
    elif kind == "truncate":
        cut = rng.randrange(1, max(2, len(lines[i])))
        lines[i] = lines[i][:cut] + rng.choice([b"\n", b""])
    elif kind == "merge" and i + 1 < len(lines):
        lines[i : i + 2] = [lines[i][: rng.randrange(1, len(lines[i]))] + lines[i + 1]]
    elif kind == "bytes":
        at = rng.randrange(len(lines[i]))
        junk = bytes(rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0xED, 0xA0, 0x00, 0xF4, 0x90]) for _ in
                     range(rng.randint(1, 4)))  # fmt: skip
        lines[i] = lines[i][:at] + junk + lines[i][at:]
    elif kind == "latin1":
        i = _pick(rng, lines, lambda r: r.get("op_code") in (0, 2, 8))
        text = lines[i].decode("utf-8", "replace").replace('"', '"é', 2)
        lines[i] = text.encode("latin-1", "replace")
    elif kind == "utf16":
        codec = rng.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
        whole = b"".join(lines).decode("utf-8", "replace").encode(codec)
        lines = [line + b"\n" for line in whole.split(b"\n")]
    elif kind == "bom":
        lines[0] = b"\xef\xbb\xbf" + lines[0]
    elif kind == "dup":
        lines.insert(i, lines[i])
    elif kind == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "blank":
        lines.insert(i, rng.choice([b"\n", b" \n", b"\r\n", b"\t\n"]))
    elif kind == "deep":
        depth = rng.choice([50, 5000, 200000])
        lines.insert(i, b'{"op_code":' + b"[" * depth + b"]" * depth + b"}\n")
    elif kind == "ids":
        i = _pick(rng, lines, lambda r: "trial_id" in r or "study_id" in r)
        record = _record(lines[i]) or {}
        key = "trial_id" if "trial_id" in record else "study_id"
        lines[i] = _dump({**record, key: rng.choice([-1, 10**6, 2**64, 1.0, "0", None])})
        kind += f" {key}"
    elif kind == "attr":
        i = _pick(rng, lines, lambda r: r.get("op_code") == 8)
        record = _record(lines[i]) or {}
        attr = dict(record.get("user_attr") or {})
        for name in attr:
            attr[name] = rng.choice(NUMBERS)
        lines[i] = _dump({**record, "user_attr": attr})
    elif kind == "surrogate":
        lines[i] = lines[i].replace(b'"', b'"\\ud800', 2) if b'"' in lines[i] else lines[i]
    elif kind == "crlf":
        lines = [line.replace(b"\n", b"\r\n") for line in lines]
    elif kind == "no_newline":
        lines[-1] = lines[-1].rstrip(b"\n")
    elif kind == "distribution":
        i = _pick(rng, lines, lambda r: r.get("op_code") == 5)
        record = _record(lines[i]) or {}
        choice = rng.choice(['{"name": "Nope"}', "[]", "{", '{"name": "IntDistribution", '
                             '"attributes": {"low": 5, "high": 1}}',
                             '{"name": "CategoricalDistribution", "attributes": '
                             '{"choices": [1]}}'])  # fmt: skip
        lines[i] = _dump({**record, "distribution": choice})
    return lines, kind


def make_journal(folder: Path, timeout: float) -> Path:
    """A journal of a real study, from ``accelopt run`` on the tiny pipeline (on the CPU)."""
    journal = folder / "study.journal"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "accelopt", "run", "--study", STUDY, "--quiet",
                    "--storage", str(journal), "--device", "cpu"], cwd=folder, env=env,
                   check=True, timeout=max(timeout, 600), capture_output=True)  # fmt: skip
    return journal


def fuzz_journals(rng: random.Random, cases: int, base: Path, scratch: Path, timeout: float,
                  tally: Tally) -> None:  # fmt: skip
    original = base.read_bytes().splitlines(keepends=True)
    case_file = scratch / "case.journal"
    for n in range(cases):
        lines, done = original, []
        for _ in range(rng.choice([1, 1, 2, 3])):
            lines, kind = mutate(rng, lines)
            done.append(kind)
        data = b"".join(lines)
        for leftover in scratch.glob("case.journal*"):
            leftover.unlink()
        case_file.write_bytes(data)
        tally.cases += 1
        what = f"journal case {n} ({', '.join(done)})"
        reads = [["best", "--study", STUDY], ["best", "--study", STUDY, "--json"], ["list"],
                 ["report", "--study", STUDY, "--images", "0", "-o", "r.html", "--force"],
                 ["export", "--study", STUDY, "--store", "store.json", "--top-k", "0",
                  "--force"]]  # fmt: skip
        for argv in rng.sample(reads, 3):
            code, out = cli([*argv, "--storage", str(case_file)], timeout)
            tally.commands += 1
            tally.count(f"{argv[0]} exit {code}")
            if "Optuna cannot replay it" in out:  # Records let through what Optuna cannot read
                tally.count("caught only by the replay's safety net")
            if (why := _bad(code, out)) is not None:
                tally.failures.append(f"{what}: {' '.join(argv)}: {why}\n{out[-1500:]}")
        before = case_file.read_bytes()
        code, out = cli(["storage", "repair", str(case_file)], timeout)
        tally.commands += 1
        tally.count(f"repair exit {code}")
        if (why := _bad(code, out)) is not None:
            tally.failures.append(f"{what}: storage repair: {why}\n{out[-1500:]}")
            continue
        if code != 0:
            refusal = re.search(r"is (.*?), not UTF-8", out)
            tally.count(f"repair refused: {refusal.group(1) if refusal else out.strip()[-80:]}")
            if case_file.read_bytes() != before:
                tally.failures.append(f"{what}: a refused repair changed the file\n{out[-500:]}")
            continue
        code, out = cli(["best", "--study", STUDY, "--storage", str(case_file)], timeout)
        tally.commands += 1
        tally.count(f"best after repair exit {code}")
        if code == 2:  # what a repaired journal still lacks (a study's creation, its name)
            tally.count(f"best after repair: {re.sub(r'[0-9]+', 'N', out.strip()[-60:])}")
        if (why := _bad(code, out)) is not None or "not a journal record" in out:
            tally.failures.append(f"{what}: best after repair: {why or 'still corrupt'}\n"
                                  f"{out[-1500:]}")  # fmt: skip


# URLs.

SCHEMES = ["postgresql", "postgresql+psycopg", "postgresql+psycopg", "postgresql+psycopg2",
           "postgres", "mysql", "mysql+pymysql", "sqlite", "sqlite+pysqlcipher", "mssql",
           "Postgresql", "pg"]  # fmt: skip
KEYS = ["password", "PASSWORD", "passwd", "pass%77ord", "sslpassword", "Password", "pwd",
        "token", "access_token", "api_key", "secret", "PWD", "auth"]  # fmt: skip
INSIDE = ["@", "#", "&", "?", "/", ":", "%", "=", "+", " ", ";", "@@", "%40", "%23", "&x=",
          "?password=", "#@", ",", "[", "]"]  # fmt: skip
HOSTS = ["127.0.0.1", "127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.1:1,127.0.0.1:2",
         "db.invalid", ""]  # fmt: skip


def password(rng: random.Random, inside: Sequence[str] = INSIDE) -> tuple[str, list[str]]:
    """A password of 2 to 4 runs of 4 to 7 letters and digits, ``inside`` characters between;
    returns it and its runs (any of which in the output is a leak)."""
    runs = ["".join(rng.choice(string.ascii_letters + string.digits) for _ in
                    range(rng.randint(4, 7))) for _ in range(rng.randint(2, 4))]  # fmt: skip
    text = runs[0]
    for run in runs[1:]:
        text += rng.choice(inside) + run
    return text, runs


def credential_url(rng: random.Random) -> tuple[str, list[str], str]:
    """A storage URL holding a password in one of the forms users write; its runs; the form."""
    form = rng.choice(["userinfo", "userinfo", "query", "query", "port", "no_colon",
                       "one_slash", "no_slash", "double_at", "user_at", "both", "nested",
                       "empty_user"])  # fmt: skip
    # In the port, an "@" makes user@host:pw@host, read so by SQLAlchemy, libpq and urllib
    # alike (Azure's user names hold an "@"): what follows it is the host by every reading.
    pw, runs = password(rng, [c for c in INSIDE if "@" not in c] if form == "port" else INSIDE)
    if rng.random() < 0.2:
        pw = quote(pw, safe=rng.choice(["", "@", ":/"]))
    scheme, host = rng.choice(SCHEMES), rng.choice(HOSTS)
    user, db = rng.choice(["alice", "a@b", "", "bob.smith"]), rng.choice(["optuna", "x", ""])
    if scheme.startswith("sqlite"):
        host, db = "", "/nonexistent-fuzz-dir/x.db"
    extra = rng.choice(["", "?sslmode=require", "?connect_timeout=1", "?uri=true"])
    key = rng.choice(KEYS)
    if form == "userinfo":
        url = f"{scheme}://{user}:{pw}@{host}/{db}{extra}"
    elif form == "query":
        sep = "&" if extra else "?"
        url = f"{scheme}://{user + '@' if user else ''}{host}/{db}{extra}{sep}{key}={pw}"
        if rng.random() < 0.5:
            url += rng.choice(["&sslmode=require", "&application_name=x", "#frag"])
    elif form == "port":
        url = f"{scheme}://{user}@{host.split(':')[0]}:{pw}/{db}"
    elif form == "no_colon":
        url = f"{scheme}//{user}:{pw}@{host}/{db}"
    elif form == "one_slash":
        url = f"{scheme}:/{user}:{pw}@{host}/{db}"
    elif form == "no_slash":
        url = f"{scheme}:{user}:{pw}@{host}/{db}"
    elif form == "double_at":
        url = f"{scheme}://{user}:{pw}@@{host}/{db}"
    elif form == "user_at":
        url = f"{scheme}://{user}@x:{pw}@{host}/{db}"
    elif form == "both":
        pw2, runs2 = password(rng)
        runs += runs2
        url = f"{scheme}://{user}:{pw}@{host}/{db}?{key}={pw2}"
    elif form == "nested":
        url = f"{scheme}://{host}/{db}?dbname=postgresql://bob:{pw}@h/db"
    else:
        url = f"{scheme}://:{pw}@{host}/{db}"
    if rng.random() < 0.25:
        url = (
            rng.choice([" ", "\t", "\n", "  ", "\r\n", ""])
            + url
            + rng.choice([" ", "\n", "\t", "", "\r\n"])
        )
    return url, runs, form


def fuzz_urls(rng: random.Random, cases: int, scratch: Path, timeout: float,
              tally: Tally) -> None:  # fmt: skip
    import optuna_dashboard

    # The dashboard would serve forever: it says where, then returns (restored at the end).
    serve = optuna_dashboard.run_server
    optuna_dashboard.run_server = lambda *args, **kwargs: None
    try:
        _fuzz_urls(rng, cases, scratch, timeout, tally)
    finally:
        optuna_dashboard.run_server = serve


def _fuzz_urls(rng: random.Random, cases: int, scratch: Path, timeout: float,
               tally: Tally) -> None:  # fmt: skip
    commands = [["run", "--study", STUDY, "--quiet"], ["worker", "--study", STUDY],
                ["best", "--study", "X"], ["list"], ["export", "--study", "X"],
                ["report", "--study", "X", "--images", "0"], ["dashboard"]]  # fmt: skip
    os.environ.pop("ACCELOPT_STORAGE", None)
    for n in range(cases):
        url, runs, form = credential_url(rng)
        tally.cases += 1
        chosen = rng.sample(commands, 2)
        if rng.random() < 0.1:
            chosen.append(["storage", "repair"])
        for argv in chosen:
            full = [*argv, url] if argv[0] == "storage" else [*argv, "--storage", url]
            if rng.random() < 0.15 and argv[0] != "storage":  # given through the environment
                os.environ["ACCELOPT_STORAGE"] = url
                full = list(argv)
            try:
                code, out = cli(full, timeout)
            finally:
                os.environ.pop("ACCELOPT_STORAGE", None)
            tally.commands += 1
            tally.count(f"{argv[0]} exit {code}")
            leaked = [r for r in runs if r in out]
            why = _bad(code, out) or (f"leaked {leaked}" if leaked else None)
            if why is not None:
                tally.failures.append(f"url case {n} ({form}) {url!r}: {argv[0]}: {why}\n"
                                      f"{out[-1500:]}")  # fmt: skip
        for leftover in scratch.iterdir():  # a command that made a file: none should
            tally.failures.append(f"url case {n} ({form}) {url!r} left {leftover.name}")
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()


# SQLite files.


@dataclass
class Place:
    """A scratch folder with one database file and ways to reach it."""

    root: Path
    db: Path  # root/base/NAME
    name: str


def _place(rng: random.Random, scratch: Path) -> Place:
    root = scratch / f"sq{rng.randrange(10**9)}"
    (root / "base" / "sub").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "link").symlink_to(root / "base", target_is_directory=True)
    name = rng.choice(["accelopt.db", "a b.db", "x%y.db", "e#f.db", "data.sqlite", "q=1.db",
                       "ü.db"])  # fmt: skip
    db = root / "base" / name
    sqlite3.connect(db).close()  # SQLite makes an empty file
    (root / "base" / "file-link.db").symlink_to(db)
    os.link(db, root / "other" / "hard.db")
    return Place(root, db, name)


def _uri_path(rng: random.Random, path: str) -> str:
    """``path`` as a file: URI path: the characters a URI must escape escaped, others maybe."""
    out = ""
    for ch in path:
        if ch in "%#? " or ord(ch) > 127 or (ch.isalnum() and rng.random() < 0.1):
            out += "".join(f"%{b:02X}" for b in ch.encode())
        else:
            out += ch
    return out


def spelling(rng: random.Random, place: Place) -> tuple[str, str]:
    """A SQLite URL for ``place.db`` (relative to ``place.root``), and how it is spelled."""
    name = place.name
    paths = {
        "relative": f"base/{name}",
        "dot": f"./base/./{name}",
        "dotdot": f"base/sub/../{name}",
        "double slash": f"base//{name}",
        "absolute": str(place.db),
        "dir link": f"link/{name}",
        "dir link dotdot": f"link/sub/../{name}",
        "file link": "base/file-link.db",
        "hard link": "other/hard.db",
        "absolute hard link": str(place.root / "other" / "hard.db"),
    }
    how, path = rng.choice(sorted(paths.items()))
    driver = rng.choice(["sqlite", "sqlite", "sqlite+pysqlite"])
    if rng.random() < 0.5 or any(c in path for c in "#?"):
        uri = _uri_path(rng, path)
        if path.startswith("/"):
            uri = rng.choice(["", "//", "//localhost"]) + uri
        extra = ["mode=rwc", "cache=shared", "timeout=5", "vfs=unix-none", "mode=ro&mode=rwc",
                 "psow=1", "nolock=0"]  # fmt: skip
        query = ["uri=true", *rng.sample(extra, rng.randint(0, 2))]
        rng.shuffle(query)
        prefix = rng.choice(["file:", "file:", "FILE:"])
        fragment = rng.choice(["", "", "#frag"])
        # SQLAlchemy decodes %XX in the database part once: escape the escapes once more.
        url = f"{driver}:///{prefix}{uri.replace('%', '%25')}{fragment}?{'&'.join(query)}"
        return url, f"{how}, file: URI"
    options = rng.choice(["", "", "?timeout=5", "?check_same_thread=false"])
    return f"{driver}:///{path.replace('%', '%25')}{options}", how


def in_memory(rng: random.Random) -> str:
    return rng.choice(["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                       "sqlite:///file:m.db?uri=true&mode=memory",
                       "sqlite:///file:m.db?uri=true&vfs=memdb",
                       "sqlite:///file:?uri=true"])  # fmt: skip


def opened_by_sqlite(url: str) -> tuple[int, int] | None:
    """The (device, inode) of the file SQLite opens for ``url`` (None: in memory)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("PRAGMA database_list").fetchall()
    finally:
        engine.dispose()
    path = next(str(r[2]) for r in rows if r[1] == "main")
    if not os.path.isabs(path):  # "" in memory; memdb's name, which no file has
        return None
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _another_name(rng: random.Random, place: Place, resolve: Callable[[str], Any]) -> str:
    """Another spelling of ``place.db`` that SQLite opens (a FILE: URI is a name of its own)."""
    want = place.db.stat().st_dev, place.db.stat().st_ino
    while True:
        url, _ = spelling(rng, place)
        with contextlib.suppress(OSError, AttributeError):
            found = resolve(url).stat()
            if (found.st_dev, found.st_ino) == want:
                return url


def fuzz_sqlite(rng: random.Random, cases: int, scratch: Path, timeout: float,
                tally: Tally) -> None:  # fmt: skip
    from accelopt.storage import sole_writer, sqlite_database

    place: Place | None = None
    for n in range(cases):
        if place is None or n % 20 == 0:  # a new place now and then
            if place is not None:
                shutil.rmtree(place.root)
            place = _place(rng, scratch)
        os.chdir(place.root)
        tally.cases += 1
        memory = rng.random() < 0.1
        url, how = (in_memory(rng), "memory") if memory else spelling(rng, place)
        what = f"sqlite case {n} ({how}) {url!r}"
        try:
            resolved = sqlite_database(url)
        except Exception as err:
            tally.failures.append(f"{what}: {type(err).__name__}: {err}")
            continue
        mine: tuple[int, int] | str | None = None
        if resolved is not None:
            try:
                mine = resolved.stat().st_dev, resolved.stat().st_ino
            except OSError:
                mine = "no such file"
        try:
            theirs: tuple[int, int] | str | None = opened_by_sqlite(url)
        except Exception as err:  # SQLite opens nothing: FILE: is a name, mode=['ro', 'rwc']
            theirs = f"SQLite opens nothing ({str(err).splitlines()[0][:80]})"
        # Where SQLite opens nothing, run fails to open the storage whatever the lock was on.
        if mine != theirs and not (isinstance(theirs, str) and resolved is not None):
            tally.failures.append(f"{what}: resolved to {resolved}, SQLite opened {theirs}")
            continue
        opens = not isinstance(theirs, str)
        tally.count("memory" if memory else "resolved like SQLite" if opens else "neither opens")
        if memory or not opens:
            continue
        other = _another_name(rng, place, sqlite_database)
        with sole_writer(other):  # another process's run, on another spelling of the file
            code, out = cli(["run", "--study", STUDY, "--quiet", "--storage", url], timeout)
        tally.commands += 1
        refused = code == 2 and "another accelopt process is running trials on" in out
        tally.count("run refused" if refused else f"run exit {code}")
        if not refused:
            tally.failures.append(f"{what} while {other!r} was held: exit {code}\n{out[-800:]}")
    os.chdir(scratch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per part")
    parser.add_argument("--seed", type=int, default=3401)
    parser.add_argument("--part", nargs="+", choices=("journal", "url", "sqlite"),
                        default=["journal", "url", "sqlite"])  # fmt: skip
    parser.add_argument("--journal", type=Path, help="a journal to mutate (default: made here)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a command may take")
    parser.add_argument("--show", type=int, default=5, help="failures shown per part")
    args = parser.parse_args(argv)

    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # SQLAlchemy's about the URLs made here: not the CLI's
    failed = False
    with tempfile.TemporaryDirectory(prefix="fuzz-storage-") as tmp:
        home = os.getcwd()
        try:
            for part in args.part:
                scratch = Path(tmp) / part  # each part's commands run in a folder of its own
                scratch.mkdir()
                os.chdir(scratch)
                rng = random.Random(f"{args.seed}-{part}")
                tally, start = Tally(), time.monotonic()
                if part == "journal":
                    base = args.journal or make_journal(Path(tmp), args.timeout)
                    fuzz_journals(rng, args.cases, base, scratch, args.timeout, tally)
                elif part == "url":
                    fuzz_urls(rng, args.cases, scratch, args.timeout, tally)
                else:
                    fuzz_sqlite(rng, args.cases, scratch, args.timeout, tally)
                failed |= bool(tally.failures)
                print(f"{part}: {tally.cases} cases, {tally.commands} commands, "
                      f"{len(tally.failures)} failures, seed {args.seed}, "
                      f"{time.monotonic() - start:.0f} s")  # fmt: skip
                for what, count in sorted(tally.outcomes.items()):
                    print(f"  {what}: {count}")
                for failure in tally.failures[: args.show]:
                    print("  FAIL " + re.sub(r"\n", "\n    ", failure.rstrip()))
                sys.stdout.flush()
        finally:
            os.chdir(home)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
