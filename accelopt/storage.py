"""Storage: opening one, repairing a journal file, finding trials whose worker is gone, locks.

The run loop (``accelopt.study.loop``) and the hand-out of trials (``accelopt.study.workers``) use
this module; it imports neither. A storage is an Optuna URL (SQLite, PostgreSQL) or a plain path,
which is a journal file.

- **URLs are redacted** wherever they are shown or stored (``storage_label``), read as
  SQLAlchemy and the standard (libpq) read them: a password and every query value but those
  known to hold none become ``***``; a URL the two read differently (an unescaped ``@``, ``#``
  or ``/`` in a password, a password in the port) is shown as its scheme and
  ``<unparsed URL hidden>``; errors are scrubbed of every piece a driver may echo.
- **A SQLite file has one writer** (``sole_writer``), whatever name reaches it: the lock is on
  the file itself, found as SQLAlchemy and SQLite resolve the URL (``sqlite_database``).
- **A journal file** (``JournalFile``) is Optuna's, with its faults handled: a half line left by
  a writer killed mid-write is cut off (and the file kept) before anything is appended after
  it, always under the journal's own lock, so a line another worker is still writing is never
  cut; each line is checked as it is read (``Records``: UTF-8, JSON, op code, fields, types,
  finite numbers, studies and trials that exist), a bad one is an error naming the file and
  line, and ``accelopt storage repair PATH`` (``repair_file``) drops or mends it, says so and
  keeps a backup; a file in another encoding is refused, not repaired.
- **Dead workers**: a trial is owned (host and process id) from its first moment, under the
  study's lock; ``recover`` fails and queues again, once, the trials of workers that are gone:
  by heartbeat on a database server, by owner on one host, and those that never got an owner.
  Failing a trial and queuing its retry are two writes: a failure that is not a retry and has
  none (``retry_owed``: a worker killed between the two, or a storage error) is queued again by
  the next ``recover``, so no crash loses a trial's point.
- **Locks**: ``storage_lock`` orders the workers of a study; ``sole_writer`` refuses a second
  writer on a SQLite file, which cannot serve two.

>>> storage_label("postgresql://alice:s3cret@db/optuna?sslpassword=x&sslmode=require")
'postgresql://alice:***@db/optuna?sslpassword=***&sslmode=require'
>>> storage_label("postgresql://alice:p@ss@db/optuna")  # SQLAlchemy's host: "ss@db"
'postgresql://<unparsed URL hidden>'
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from accelopt.errors import AccelOptError, printable

__all__ = [
    "DEFAULT_STORAGE",
    "HEARTBEAT",
    "HIDDEN",
    "ORPHAN_GRACE",
    "SHARED_STORAGE",
    "SQLITE_WORKERS",
    "BadRecord",
    "CorruptJournal",
    "JournalFile",
    "Records",
    "Repair",
    "check_url",
    "fail_stale_trials",
    "heartbeat",
    "heartbeat_interval",
    "is_sqlite",
    "is_storage_error",
    "lock_key",
    "open_storage",
    "owner",
    "recover",
    "recover_stale_trials",
    "repair_file",
    "repair_journal",
    "retry",
    "retry_owed",
    "scrub",
    "shared_storage",
    "sole_writer",
    "sqlite_database",
    "sqlite_file",
    "sqlite_missing",
    "storage_label",
    "storage_lock",
    "storage_url",
]

DEFAULT_STORAGE = "sqlite:///accelopt.db"
HEARTBEAT = 30  # seconds between heartbeats of a database worker; stale after twice that
# A trial gets its owner within milliseconds of its start, under the study's lock, and recovery
# runs under that lock too: a RUNNING trial still without one lost its worker in between. The
# grace only spares a writer that takes no lock (Optuna itself, a notebook).
ORPHAN_GRACE = 10.0
SQLITE_WORKERS = (
    "SQLite cannot serve several workers at once (its writers lock each other out and trials "
    "are lost); use a journal file on one host (--storage accelopt.journal) or PostgreSQL for "
    "many hosts (--storage postgresql://USER@HOST/DB, password in $PGPASSWORD or ~/.pgpass)"
)
SHARED_STORAGE = "accelopt.journal"  # several workers on one host, no storage named anywhere
# What a retry keeps of its failed trial's user attributes: where it came from, not who ran it,
# why it failed or what it half measured.
CARRIED = ("warm_start",)
CONSTRAINTS = "constraints"  # Optuna's system attributes of measured constraints: constraints:KEY


# URLs: one redaction for every form, shown or stored.

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):(/*)")
# SQLAlchemy's own pattern (sqlalchemy.engine.url._parse_url): a URL is read as it will be.
_SQLALCHEMY = re.compile(
    r"""[\w+]+://
        (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
        (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
        (?:/(?P<database>[^?]*))?
        (?:\?(?P<query>.*))?""",
    re.X,
)
# One host of a URL's host list (libpq takes several, comma-separated), with its port.
_HOST = re.compile(r"(?:\[[0-9A-Za-z:.%]*\]|[\w.\-%~]*)(?::\d*)?")
_CREDENTIAL = re.compile(r"pass|pwd|secret|token|key|auth|cred|sig", re.IGNORECASE)
# Query parameters whose value is shown (when it is a plain word): libpq's, SQLite's and
# SQLAlchemy's that hold no secret. Any other value is hidden: an "&" or "#" inside a password
# makes its tail look like a parameter of its own.
_SHOWN_PARAMS = frozenset(
    str.split(
        "sslmode sslcompression sslrootcert sslcert sslcrl sslcrldir sslsni requiressl "
        "gssencmode channel_binding connect_timeout client_encoding application_name "
        "fallback_application_name keepalives keepalives_idle keepalives_interval "
        "keepalives_count tcp_user_timeout replication target_session_attrs "
        "load_balance_hosts host hostaddr port dbname user charset uri timeout mode cache "
        "vfs immutable nolock psow check_same_thread isolation_level detect_types "
        "cached_statements"
    )
)
_PLAIN_VALUE = re.compile(r"[\w.\-/,+~]*")
_PLAIN_NAME = re.compile(r"[\w.\-%]+")
_SEPARATORS = re.compile(r"[&;]")
HIDDEN = "<unparsed URL hidden>"


@dataclass
class _Reading:
    """What one parser takes a URL for: its parts (user, password, host, port, database,
    query, as written), the spans of text to hide, the secrets, and whether it reads at all
    (hosts that are host names, ports that are numbers)."""

    parts: tuple[str | None, ...] = ()
    spans: list[tuple[int, int]] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    valid: bool = True

    def hide(self, start: int, end: int, text: str) -> None:
        if end > start:
            self.spans.append((start, end))
            self.secrets.add(text[start:end])


def _query(reading: _Reading, text: str, start: int, end: int) -> None:
    """Hide the values of a query string's parameters, but those known to hold no secret, and
    every piece without a "=" (the tail of a value cut at an "&")."""
    from urllib.parse import unquote_plus

    pos = start
    for segment in _SEPARATORS.split(text[start:end]):
        at, pos = pos, pos + len(segment) + 1
        key, eq, value = segment.partition("=")
        if not eq:
            reading.hide(at, at + len(segment), text)
            continue
        name = unquote_plus(key).strip().lower()
        known = name in _SHOWN_PARAMS or _CREDENTIAL.search(name)
        if not known or not _PLAIN_NAME.fullmatch(key):
            reading.hide(at, at + len(segment), text)  # a name no driver knows: a tail, maybe
        elif _CREDENTIAL.search(name) or not _PLAIN_VALUE.fullmatch(unquote_plus(value)):
            reading.hide(at + len(key) + 1, at + len(segment), text)


def _standard(text: str, start: int) -> _Reading:
    """The URL as RFC 3986 reads it (libpq, urllib), from ``start`` (after its "//"): the
    authority up to the first "/", "?" or "#", its user and password up to its last "@", then
    hosts and ports; a database after "/"; the query after the first "?" past it."""
    reading = _Reading()
    end = next((i for i in range(start, len(text)) if text[i] in "/?#"), len(text))
    at = text.rfind("@", start, end)
    user = password = None
    if at >= 0:
        user = text[start:at]
        colon = text.find(":", start, at)
        if colon >= 0:
            user, password = text[start:colon], text[colon + 1 : at]
            reading.hide(colon + 1, at, text)
    hosts = text[at + 1 if at >= 0 else start : end]
    reading.valid = all(_HOST.fullmatch(h) for h in hosts.split(","))
    host, sep, port = hosts.rpartition(":")
    if not sep or hosts.endswith("]"):  # no port (an IPv6 host's colons are inside [])
        host, port = hosts, ""
    query = text.find("?", end)
    database = None
    if text[end : end + 1] == "/":
        database = text[end + 1 : query if query >= 0 else len(text)]
    if query >= 0:
        _query(reading, text, query + 1, len(text))
    reading.parts = (user, password, host.strip("[]") or None, port or None, database,
                     None if query < 0 else text[query + 1 :])  # fmt: skip
    # An "@" past the authority: the password may run on past a "/", "?" or "#" to it.
    reading.valid = reading.valid and "@" not in text[end:]
    return reading


def _sqlalchemy(text: str) -> _Reading | None:
    """The URL as SQLAlchemy reads it (its password ends at its first "@"); None where it
    cannot read it at all."""
    m = _SQLALCHEMY.match(text)
    if m is None:
        return None
    reading = _Reading()
    if m.group("password") is not None:
        reading.hide(*m.span("password"), text)
    port, host = m.group("port"), m.group("ipv6host") or m.group("ipv4host")
    shown = f"[{host}]" if m.group("ipv6host") else host or ""
    reading.valid = (not port or port.isdigit()) and _HOST.fullmatch(shown) is not None
    if m.group("query") is not None:
        _query(reading, text, *m.span("query"))
    reading.hide(m.end(), len(text), text)  # past a newline: SQLAlchemy drops it, unread
    reading.parts = (m.group("username"), m.group("password"), host or None, port or None,
                     m.group("database"), m.group("query"))  # fmt: skip
    return reading


def _pieces(secrets: set[str]) -> set[str]:
    """Each secret as given, decoded and encoded, and each part a parser ending it at an "@"
    shows as host, port or database."""
    from urllib.parse import quote, quote_plus, unquote, unquote_plus

    found: set[str] = set()
    for secret in secrets:
        for form in {secret, unquote(secret), unquote_plus(secret)}:
            parts = form.split("@")
            found |= {form, *parts, *re.split(r"[=&;]", form)}
            for part in parts[1:]:
                found.update(re.split(r"[/:?#&]", part))
    # as SQLAlchemy's rendering of a URL in its errors quotes them
    found |= {quote(p, safe="") for p in found} | {quote_plus(p) for p in found}
    return {p.strip() for p in found if p.strip()}


def _tokens(text: str) -> set[str]:
    """Every run of ``text`` between the characters a URL is cut at: what may be secret in a
    URL no parser reads the same, to scrub from the errors it causes."""
    from urllib.parse import unquote

    cut = re.compile(r"[@/:?#&=;,\s\[\]+]")
    return _pieces({w for w in [*cut.split(text), *cut.split(unquote(text))] if w})


def _shows(text: str, piece: str) -> bool:
    # A short secret only as a word: "a" must not hide every label.
    if len(piece) >= 4:
        return piece in text
    return re.search(rf"(?<!\w){re.escape(piece)}(?!\w)", text) is not None


def _redacted(url: str) -> tuple[str, list[str]]:
    """``url`` with its secrets replaced by ***, and the secrets (with the pieces a parser may
    show of them), longest first.

    A URL is read as SQLAlchemy reads it (it connects) and as the standard does (what a person
    means); where the two disagree (an "@", "#", "/" or "?" inside a password, a password in
    the port) it is shown as its scheme and ``HIDDEN``: no reading is safe to show. A URL
    without "//" (refused by ``check_url``) and a path holding user:password@ hide from the
    first ":" to the last "@"."""
    start = len(url) - len(url.lstrip())
    scheme = _SCHEME.match(url, start)
    head = url[start : scheme.end()] if scheme else ""
    everything = sorted(_tokens(url[start + len(head) :]), key=len, reverse=True)
    # hidden, the URL keeps the spaces around it: check_url says they are there
    hidden = url[:start] + head + HIDDEN + url[len(url.rstrip()) :]
    if scheme is None and "://" in url:
        return hidden, everything
    if scheme is None or not scheme.group(2).startswith("//"):
        if scheme is None and "@" not in url and "?" not in url:  # a journal file's path
            return url, []
        readings = [_path(url, scheme.end() if scheme else start)]
    else:
        standard = _standard(url, scheme.end(1) + 3)
        sqlalchemy = _sqlalchemy(url[start:])
        if sqlalchemy is not None:
            sqlalchemy.spans = [(a + start, b + start) for a, b in sqlalchemy.spans]
        if not standard.valid or (
            sqlalchemy is not None and (not sqlalchemy.valid or sqlalchemy.parts != standard.parts)
        ):
            return hidden, everything
        readings = [standard] if sqlalchemy is None else [standard, sqlalchemy]
    secrets = sorted(_pieces(set().union(*(r.secrets for r in readings))), key=len, reverse=True)
    shown = _masked(url, [s for r in readings for s in r.spans])
    if any(_shows(shown.replace("***", " "), p) for p in secrets):
        return hidden, everything  # a secret shows elsewhere too: hide it all
    return shown, secrets


def _path(text: str, start: int) -> _Reading:
    """A URL without "//", or a journal file's path, that holds what looks like a password:
    from the first ":" past ``start`` to the last "@" (``postgresql//alice:pw@db``,
    ``postgresql:/alice:pw@db``), and query values (``x?password=pw``)."""
    reading = _Reading()
    at = text.rfind("@")
    colon = text.find(":", start, max(at, 0))
    if colon >= 0:
        reading.hide(colon + 1, at, text)
    query = text.find("?")
    if query >= 0:
        _query(reading, text, query + 1, len(text))
    return reading


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each of ``spans`` (overlapping or not) replaced by ***."""
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out, last = [], 0
    for a, b in merged:
        out += [text[last:a], "***"]
        last = b
    return "".join([*out, text[last:]])


def storage_label(url: str) -> str:
    """A storage URL fit for logs, errors and files: every secret replaced by ***.

    The URL is read as SQLAlchemy reads it (it connects) and as the standard does (libpq,
    urllib: what a person means). Where they agree, the password and every query value but
    those of parameters known to hold none (``sslmode``, ``connect_timeout`` ...) are hidden,
    and so is a parameter no driver knows, whole (the tail of a value cut at an "&"). Where
    they differ (an unescaped "@", "#", "/" or "?" in a password, one in the port, an "@" past
    the host), no part is safe to show: the URL reads as its scheme and
    ``<unparsed URL hidden>``. A URL without "//" and a path holding ``user:pass@`` hide from
    the first ":" to the last "@". Any other path is shown as is.

    >>> storage_label("postgresql:/alice:s3cret@db/optuna")
    'postgresql:/alice:***@db/optuna'
    >>> storage_label("postgresql://db:5432/x?sslmode=require&password=s3&cret")
    'postgresql://db:5432/x?sslmode=require&password=***&***'
    >>> storage_label(" postgresql://db:5432/x?password=aa@TAIL")  # SQLAlchemy's host: TAIL
    ' postgresql://<unparsed URL hidden>'
    """
    return _redacted(url)[0]


def scrub(text: str, url: str) -> str:
    """``text`` (an error message) with ``url`` and each of its secrets redacted."""
    label, secrets = _redacted(url)
    for shown in (url, url.strip(), *_renderings(url)):
        text = text.replace(shown, label.strip())
    for secret in secrets:
        # A short secret is replaced only as a word: "a" must not garble the message.
        pattern = re.escape(secret) if len(secret) >= 4 else rf"(?<!\w){re.escape(secret)}(?!\w)"
        text = re.sub(pattern, "***", text)
    return text


def _renderings(url: str) -> list[str]:
    """How SQLAlchemy's own errors show ``url`` (its parts quoted, the password as *** or not),
    longest first."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        shown = {u.render_as_string(hide_password=h)
                 for u in (parsed, parsed.set(password=None)) for h in (True, False)}  # fmt: skip
    except Exception:  # a URL SQLAlchemy cannot read: its errors do not show it
        return []
    return sorted(shown, key=len, reverse=True)


def storage_url(url: str | None, default: str = DEFAULT_STORAGE) -> str:
    """The storage a command means: ``url``, else $ACCELOPT_STORAGE, else ``default``."""
    return url or os.environ.get("ACCELOPT_STORAGE") or default


# A scheme and "//" without the colon between: "postgresql//alice@db/optuna".
_NO_COLON = re.compile(r"\s*([A-Za-z][\w+.\-]*)//")


def check_url(url: str) -> None:
    """Refuse what is neither a URL nor a path: ``postgresql:/...`` (one slash) would be taken
    for a journal file in a folder ``postgresql:``, and its error would show the password; so
    would ``postgresql//...``; a URL with spaces around it reads as no URL at all."""
    scheme = _SCHEME.match(url.strip())
    if "://" in url and url != url.strip():
        raise AccelOptError(
            f"storage '{storage_label(url)}' has spaces or line breaks around it; remove them"
        )
    if scheme is not None and "://" not in url:
        raise AccelOptError(
            f"storage {storage_label(url)} is neither a URL nor a journal file: a database URL "
            f"starts with {scheme.group(1)}:// (two slashes); a journal file whose name holds "
            f"a colon needs a folder in front (./NAME)"
        )
    missing = _NO_COLON.match(url)
    if missing is not None and missing.group(1).split("+")[0].lower() in (*_DIALECTS, "postgres"):
        raise AccelOptError(
            f"storage {storage_label(url)} is neither a URL nor a journal file: a database URL "
            f"starts with {missing.group(1)}:// (a colon before the two slashes)"
        )


def open_storage(
    url: str | None, *, heartbeat: int = HEARTBEAT
) -> tuple[optuna.storages.BaseStorage, str]:
    """``url``, else $ACCELOPT_STORAGE, else a SQLite file here. A plain path is a journal file.

    A database server (PostgreSQL) keeps a heartbeat of every running trial: a trial whose
    worker stops beating for ``2 * heartbeat`` seconds is failed and queued again once. A
    password is best left out of the URL: PostgreSQL reads $PGPASSWORD or ~/.pgpass.
    """
    url = storage_url(url)
    check_url(url)
    if "://" in url:
        database = sqlite_database(url)  # refuses a SQLite URL whose file cannot be told
        if database is not None and database.exists() and not database.is_file():
            raise AccelOptError(f"storage {storage_label(url)}: {database} is not a regular "
                                f"file; give the path of a SQLite database file")  # fmt: skip
        try:
            return _open_database(url, heartbeat), url
        except Exception as err:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0]
            if type(err).__name__ == "NoSuchModuleError":  # SQLAlchemy knows no such scheme
                why = _unknown_scheme(url)
            raise AccelOptError(
                f"cannot open storage {storage_label(url)}: {scrub(why, url)}"
            ) from None
    path, shown = Path(url), storage_label(url)
    if path.exists() and not path.is_file():
        raise AccelOptError(f"storage {shown} is not a journal file; give a file path or a URL")
    try:
        backend = JournalFile(url)
    except OSError as err:
        raise AccelOptError(f"cannot open journal file {shown}: {err.strerror}") from None
    repair_journal(path, backend)
    return _JournalStorage(backend), url


class _JournalStorage(optuna.storages.JournalStorage):
    """Optuna's ``JournalStorage``, whose replay of a record ``Records`` let through but Optuna
    cannot apply ends in ``CorruptJournal`` naming its line, not in Optuna's own error (errors
    about this worker's own records, such as a study name taken, are Optuna's to raise)."""

    def _sync_with_backend(self) -> None:
        replay = self._replay_result
        backend = self._backend
        assert isinstance(backend, JournalFile)  # open_storage makes no other
        last: list[dict[str, Any]] = []

        def logs() -> Iterator[dict[str, Any]]:
            for log in backend.read_logs(replay.log_number_read):
                last[:] = [log]
                yield log

        try:
            replay.apply_logs(logs())
        except CorruptJournal:
            raise
        except Exception as err:
            if not last or last[0].get("worker_id") == replay.worker_id:
                raise
            why = f"Optuna cannot replay it: {type(err).__name__}"
            raise CorruptJournal(_corrupt(backend.path, replay.log_number_read, why)) from None


# The databases SQLAlchemy ships a dialect for (sqlalchemy.dialects): what a mistyped scheme is
# compared with.
_DIALECTS = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def _unknown_scheme(url: str) -> str:
    """Why SQLAlchemy cannot open ``url``, with the URL meant: ``sqlte:///x.db`` is
    ``sqlite:///x.db``, ``postgres://`` is ``postgresql://``."""
    import difflib

    scheme, rest = url.split("://", 1)
    close = difflib.get_close_matches(scheme.lower(), _DIALECTS, 1, 0.5)
    if not close:
        return f"unknown scheme {scheme}://; use {', '.join(s + '://' for s in _DIALECTS)}"
    return f"unknown scheme {scheme}://: did you mean {storage_label(f'{close[0]}://{rest}')}?"


def _open_database(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    # pre-ping: a connection a database dropped during an idle hour is replaced, not reported
    # as an error in the middle of a study.
    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if is_sqlite(url):  # one worker on one host: owners are checked by process id
        return optuna.storages.RDBStorage(url, **kwargs)
    kwargs.update(heartbeat_interval=heartbeat, heartbeat_stale_trial_callback=retry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if not url.startswith("postgresql"):
            return optuna.storages.RDBStorage(url, **kwargs)
        # Workers starting together on a new database would all create its tables at once.
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": lock_key("accelopt schema")})  # fmt: skip
                return optuna.storages.RDBStorage(url, **kwargs)
        finally:
            engine.dispose()


class CorruptJournal(AccelOptError):
    """A line in the middle of a journal file is not a record: nothing after it can be read."""


def is_storage_error(err: BaseException) -> bool:
    """Errors of the storage itself (a database gone, a lost connection, a corrupt journal)."""
    import sqlalchemy.exc

    return isinstance(
        err,
        optuna.exceptions.StorageInternalError | sqlalchemy.exc.SQLAlchemyError | CorruptJournal,
    )


# Journal records: what Optuna's JournalStorage reads from each line, checked before it does.

# Optuna's JournalOperation codes (optuna.storages.journal._storage), in order: what Records
# checks of each, by the name of its method.
OPERATIONS = ("create_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "create_trial", "set_trial_param", "set_trial_state_values",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "discard_trials")  # fmt: skip
CREATE_STUDY, CREATE_TRIAL, DISCARD_TRIALS = 0, 4, 10  # the last written only by Rustuna
_STATES = {s.value: s for s in TrialState}
_DIRECTIONS = (0, 1, 2)  # StudyDirection: NOT_SET, MINIMIZE, MAXIMIZE


class BadRecord(ValueError):
    """A line that is not a record Optuna can replay; ``missing`` is the study or trial it
    names that no earlier line created (a creating line lost): ``("trial", 7)``, else None."""

    def __init__(self, why: str, missing: tuple[str, int] | None = None) -> None:
        super().__init__(why)
        self.missing = missing


def _integer(log: dict[str, Any], key: str) -> int:
    value = log.get(key)
    if key not in log:
        raise BadRecord(f"no {key}")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRecord(f"{key} is {_kind(value)}, not a whole number >= 0")
    return value


def _finite(value: Any, what: str) -> None:
    from accelopt._types import is_number

    if not is_number(value):
        raise BadRecord(f"{what} is {_kind(value)}, not a finite number")


def _values(value: Any, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not value:
        raise BadRecord(f"{what} is {_kind(value)}, not a list of numbers")
    for v in value:
        _finite(v, f"a value in {what}")


def _time(log: dict[str, Any], key: str, optional: bool = False) -> None:
    if key not in log and optional:
        return
    value = log.get(key)
    if not isinstance(value, str):
        raise BadRecord(f"{key} is {_kind(value)}, not a date and time")
    try:
        dt.datetime.fromisoformat(value).astimezone()
    except (ValueError, OverflowError, OSError):
        raise BadRecord(f"{key} {value[:40]!r} is not a date and time") from None


def _state(value: Any) -> TrialState:
    if not isinstance(value, int) or isinstance(value, bool) or value not in _STATES:
        raise BadRecord(f"state {json.dumps(value)[:20]} is no trial state, 0 to 4")
    return _STATES[value]


def _one_attr(log: dict[str, Any], key: str) -> None:
    value = log.get(key)
    if not isinstance(value, dict):
        raise BadRecord(f"{key} is {_kind(value)}, not one name and its value")
    if len(value) != 1:
        raise BadRecord(f"{key} holds {len(value)} names, not one")


def _dict(log: dict[str, Any], key: str) -> dict[str, Any]:
    value = log.get(key, {})
    if not isinstance(value, dict):
        raise BadRecord(f"{key} is {_kind(value)}, not an object")
    return value


def _distribution(text: Any, what: str) -> Any:
    from optuna.distributions import BaseDistribution, json_to_distribution

    if not isinstance(text, str):
        raise BadRecord(f"{what} is {_kind(text)}, not a distribution")
    try:
        found = json_to_distribution(text)
    except Exception:  # json_to_distribution checks nothing: any error means garbage
        found = None
    if not isinstance(found, BaseDistribution):
        raise BadRecord(f"{what} {text[:60]!r} is not a distribution")
    return found


def _param(distribution: Any, value: Any, name: str) -> None:
    from optuna.distributions import CategoricalDistribution

    _finite(value, f"the value of parameter {name!r}")
    if isinstance(distribution, CategoricalDistribution) and not (
        float(value).is_integer() and 0 <= value < len(distribution.choices)
    ):
        raise BadRecord(f"parameter {name!r} picks choice {value} of "
                        f"{len(distribution.choices)}")  # fmt: skip
    try:
        distribution.to_external_repr(value)
    except Exception:
        raise BadRecord(f"the value of parameter {name!r} is outside its distribution") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)  # fmt: skip


def _strings_are_text(value: Any) -> bool:
    """No lone surrogate (``"\\ud800"``) anywhere: JSON allows one, no file or terminal does."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
    return True


@dataclass
class Records:
    """The ids Optuna hands out while it replays a journal, kept to check each next record
    against: a record naming a study or trial no earlier line created would be applied to
    another one, or lost, without a word."""

    next_study: int = 0
    studies: dict[int, str] = field(default_factory=dict)  # live (not deleted) id: its name
    objectives: dict[int, int] = field(default_factory=dict)  # every study id made: objectives
    trial_study: list[int] = field(default_factory=list)  # trial id -> its study's id

    def check(self, line: bytes, first: bool = False) -> dict[str, Any]:
        """The record on ``line`` (its newline included or not), checked as Optuna will read it
        and then counted; ``BadRecord`` says why it is not one. ``first``: the file's first
        line, which may start with UTF-8's byte order mark."""
        try:
            text = line.decode("utf-8-sig" if first else "utf-8")
        except UnicodeDecodeError:
            raise BadRecord("not UTF-8 text") from None
        try:
            log = json.loads(text)
        except RecursionError:
            raise BadRecord("not JSON (nested too deep)") from None
        except ValueError:
            raise BadRecord("not JSON") from None
        if not isinstance(log, dict):
            raise BadRecord(f"{_kind(log)}, not a record")
        op = log.get("op_code")
        if not isinstance(op, int) or isinstance(op, bool) or not 0 <= op <= DISCARD_TRIALS:
            shown = "missing" if "op_code" not in log else json.dumps(op)[:20]
            raise BadRecord(f"op_code {shown} is none of Optuna's journal operations, 0 to 10")
        if op == DISCARD_TRIALS:
            return log
        if not isinstance(log.get("worker_id"), str):
            raise BadRecord(f"worker_id is {_kind(log.get('worker_id'))}, not a string")
        if not _strings_are_text(log):
            raise BadRecord("a string holds a lone surrogate (no Unicode text)")
        try:
            getattr(self, f"_{OPERATIONS[op]}")(log)
        except BadRecord:
            raise
        except Exception as err:  # a value no check foresaw: still one line, not a traceback
            raise BadRecord(f"a value Optuna cannot read ({type(err).__name__})") from None
        return log

    def _study(self, log: dict[str, Any]) -> int:
        study = _integer(log, "study_id")
        if study >= self.next_study:
            raise BadRecord(
                f"names study {study}, which no earlier line created", ("study", study)
            )
        return study

    def _trial(self, log: dict[str, Any]) -> int:
        trial = _integer(log, "trial_id")
        if trial >= len(self.trial_study):
            raise BadRecord(
                f"names trial {trial}, which no earlier line created", ("trial", trial)
            )
        return trial

    def _create_study(self, log: dict[str, Any]) -> None:
        name, directions = log.get("study_name"), log.get("directions")
        if not isinstance(name, str):
            raise BadRecord(f"study_name is {_kind(name)}, not a string")
        if (
            not isinstance(directions, list)
            or not directions
            or any(d not in _DIRECTIONS or isinstance(d, bool) for d in directions)
        ):
            raise BadRecord(f"directions {json.dumps(directions)[:40]} are not a list of 0, 1, 2")
        if name not in self.studies.values():  # a name taken: Optuna skips the line
            self.studies[self.next_study] = name
            self.objectives[self.next_study] = len(directions)
            self.next_study += 1

    def _delete_study(self, log: dict[str, Any]) -> None:
        self.studies.pop(self._study(log), None)

    def _set_study_user_attr(self, log: dict[str, Any]) -> None:
        self._study(log)
        _one_attr(log, "user_attr")

    def _set_study_system_attr(self, log: dict[str, Any]) -> None:
        self._study(log)
        _one_attr(log, "system_attr")

    def _create_trial(self, log: dict[str, Any]) -> None:
        study = self._study(log)
        if "datetime_start" not in log:
            raise BadRecord("no datetime_start")
        if log["datetime_start"] is not None:
            _time(log, "datetime_start")
        _time(log, "datetime_complete", optional=True)
        state = _state(log.get("state", TrialState.RUNNING.value))
        value, values = log.get("value"), log.get("values")
        if value is not None and values is not None:
            raise BadRecord("both value and values")
        if value is not None:
            _finite(value, "value")
        _values(values, "values")
        self._complete(state, [value] if value is not None else values, study)
        distributions = {k: _distribution(v, f"the distribution of {k!r}")
                         for k, v in _dict(log, "distributions").items()}  # fmt: skip
        for name, param in _dict(log, "params").items():
            if name not in distributions:
                raise BadRecord(f"parameter {name!r} has no distribution")
            _param(distributions[name], param, name)
        _dict(log, "user_attrs")
        _dict(log, "system_attrs")
        for step, v in _dict(log, "intermediate_values").items():
            try:
                int(step)
            except ValueError:
                raise BadRecord(f"intermediate step {step[:20]!r} is not a number") from None
            _finite(v, f"the intermediate value of step {step[:20]}")
        if study in self.studies:  # Optuna makes no trial in a deleted study
            self.trial_study.append(study)

    def _complete(self, state: TrialState, values: list[Any] | None, study: int) -> None:
        """A COMPLETE trial has one value per objective of its study."""
        if state != TrialState.COMPLETE:
            return
        wanted = self.objectives.get(study, 1)
        if values is None or len(values) != wanted:
            got = "none" if values is None else len(values)
            raise BadRecord(f"a COMPLETE trial with {got} values for {wanted} objective(s)")

    def _set_trial_param(self, log: dict[str, Any]) -> None:
        self._trial(log)
        name = log.get("param_name")
        if not isinstance(name, str):
            raise BadRecord(f"param_name is {_kind(name)}, not a string")
        distribution = _distribution(log.get("distribution"), f"the distribution of {name!r}")
        if "param_value_internal" not in log:
            raise BadRecord("no param_value_internal")
        _param(distribution, log["param_value_internal"], name)

    def _set_trial_state_values(self, log: dict[str, Any]) -> None:
        trial = self._trial(log)
        state = _state(log.get("state"))
        if "values" not in log:
            raise BadRecord("no values")
        _values(log["values"], "values")
        if state == TrialState.RUNNING:
            _time(log, "datetime_start")
        elif state.is_finished():
            _time(log, "datetime_complete")
        self._complete(state, log["values"], self.trial_study[trial])

    def _set_trial_intermediate_value(self, log: dict[str, Any]) -> None:
        self._trial(log)
        _integer(log, "step")
        _finite(log.get("intermediate_value"), "intermediate_value")

    def _set_trial_user_attr(self, log: dict[str, Any]) -> None:
        self._trial(log)
        _one_attr(log, "user_attr")

    def _set_trial_system_attr(self, log: dict[str, Any]) -> None:
        self._trial(log)
        _one_attr(log, "system_attr")


# Journal files.


class JournalFile(BaseJournalBackend):
    """Optuna's journal file format and lock, with its faults handled.

    Upstream's ``JournalFileBackend`` raises a bare ``JSONDecodeError`` at a corrupt line, and
    appends after a half line left by a killed writer, which merges the two into one corrupt
    line: the worker that appended dies, and so does every later reader. Upstream's replay
    trusts every line that is JSON: a record without a field it reads, an unknown op code or a
    trial no line created ends in a ``KeyError`` or an ``AssertionError`` in every reader, or is
    applied to another trial without a word. Here each line is checked as it is read
    (``Records``: UTF-8, JSON, the op code, the fields that op code needs and their types,
    finite numbers, studies and trials that exist), and one that fails is a ``CorruptJournal``
    error naming the file, the line, why, and the repair command. A half line is cut off (the
    whole file kept as ``NAME.broken-TIME``) before anything is appended. Both happen under the
    journal's lock (``NAME.lock``, the one upstream writers take), which a writer holds for the
    whole of its line: what is cut is never a line still being written.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = JournalFileSymlinkLock(path)
        if not os.path.exists(path):
            open(path, "ab").close()
        self._offsets: dict[int, int] = {0: 0}  # log number -> where its line starts
        self._records = Records()  # what the lines checked so far made
        self._checked = 0  # lines checked so far

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as f:
            start = log_number_from if log_number_from in self._offsets else 0
            offset = self._offsets[start]
            f.seek(offset)
            # Only what was there when reading began: a writer may be appending meanwhile.
            end = os.fstat(f.fileno()).st_size
            for number, line in enumerate(f, start=start):
                if offset + len(line) > end or not line.endswith(b"\n"):
                    return  # a line still being written, or a half line: not there yet
                if number < self._checked:  # checked on an earlier read
                    log = json.loads(line.decode("utf-8-sig" if number == 0 else "utf-8"))
                else:
                    try:
                        log = self._records.check(line, first=number == 0)
                    except BadRecord as bad:
                        raise CorruptJournal(_corrupt(self.path, number + 1, bad, line)) from None
                    self._checked = number + 1
                offset += len(line)
                self._offsets[number + 1] = offset
                if number >= log_number_from:
                    yield log

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with self.locked():
            self.cut_broken_tail()
            # One unbuffered write: a signal handler (Ctrl-C) runs after it, never inside it.
            with open(self.path, "ab", buffering=0) as f:
                f.write(data.encode("utf-8"))
                os.fsync(f.fileno())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the journal's lock: no writer is in the middle of a line meanwhile."""
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def torn(self) -> bool:
        """Whether the file ends in a line without its newline: a writer killed mid-write, or
        (outside ``locked``) one still writing."""
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return False
            f.seek(size - 1)
            return f.read(1) != b"\n"

    def cut_broken_tail(self) -> Path | None:
        """Cut a half-written last line off the file; call under ``locked``. Returns the copy of
        the whole file kept first, or None when the file was whole.

        A whole line that is not a record is left for ``repair_file``: it may be a half line
        with a record appended after it, which that keeps."""
        if not self.torn():
            return None
        with open(self.path, "rb") as f:
            cut = _last_line_start(f, os.fstat(f.fileno()).st_size)
            f.seek(0)
            head = f.read(64)
            f.seek(cut)
            tail = f.read()
        if _foreign_encoding(head) or _foreign_encoding(tail):
            return None  # no half line: a file in another encoding, which readers refuse
        backup = _backup(Path(self.path))
        # In place: readers keep their place, since none read past a line that had not ended.
        os.truncate(self.path, cut)
        print(f"accelopt: warning: {self.path} ended in a half-written line (a writer killed "
              f"mid-write); cut it off (the whole file is kept as {backup})",
              file=sys.stderr)  # fmt: skip
        return backup


def _corrupt(path: str, number: int, bad: BadRecord | str, line: bytes = b"") -> str:
    """The one line a reader of a bad journal line says."""
    shown = storage_label(path)
    encoding = _foreign_encoding(line)
    if encoding is not None:
        return _not_utf8(shown, number, encoding)
    return (
        f"journal file {shown}, line {number}: not a journal record ({bad}); Optuna reads "
        f"nothing past it. Stop its workers, then run: accelopt storage repair {shown} (it "
        f"drops or mends the bad lines and keeps a backup)"
    )


def _not_utf8(shown: str, number: int, encoding: str) -> str:
    return (
        f"journal file {shown}, line {number} is {encoding}, not UTF-8: journal files are "
        f"UTF-8; convert it back (e.g. iconv -f {encoding.split()[0]} -t UTF-8) and check it "
        f"(accelopt storage repair changes no encoding)"
    )


_WIDE = {"UTF-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
         "UTF-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)}  # fmt: skip


def _foreign_encoding(line: bytes) -> str | None:
    """The encoding a line that is no UTF-8 record was written in, where it is one: UTF-16 or
    UTF-32 (a byte order mark, or a record among the zero bytes), Latin-1 (a record, once read
    so); None for a line that is no record in any (garbage, a half line)."""
    for name, marks in _WIDE.items():
        if line.startswith(marks):
            return name
    if line.count(b"\x00") * 4 >= len(line) > 0:
        for name, codec in (("UTF-16", "utf-16-le"), ("UTF-16", "utf-16-be"),
                            ("UTF-32", "utf-32-le"), ("UTF-32", "utf-32-be")):  # fmt: skip
            for shift in range(4):  # a line cut at "\n" starts inside a wide character
                text = line[shift:].decode(codec, "ignore")
                if '"op_code"' in text:
                    return name
        return None
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        if '"op_code"' in line.decode("latin-1"):
            return "Latin-1 (or Windows-1252)"
    return None


def _last_line_start(f: Any, end: int) -> int:
    """Where the line ending at byte ``end`` (exclusive of a newline there) starts."""
    pos, chunk = end, 1 << 16
    while pos > 0:
        step = min(chunk, pos)
        f.seek(pos - step)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            return pos - step + newline + 1
        pos -= step
    return 0


def _backup(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    shutil.copyfile(path, backup)
    return backup


def repair_journal(path: Path, backend: JournalFile | None = None) -> Path | None:
    """At start-up: cut a half-written last line (a writer killed mid-write) off a journal file.

    Under the journal's lock, so a line another worker is still writing is complete by then and
    never cut; a whole file is only read (it may be read-only). The whole file is first copied
    to ``<name>.broken-<time>``; returns that copy, or None when the file was whole (or is not
    there).
    """
    if not path.is_file():
        return None
    backend = backend or JournalFile(str(path))
    if not backend.torn():
        return None
    with backend.locked():
        return backend.cut_broken_tail()


@dataclass
class Repair:
    """What ``repair_file`` did, by line number (1-based, of the original file)."""

    path: Path
    lines: int = 0
    dropped: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # why each dropped line was
    salvaged: list[int] = field(default_factory=list)  # a record kept from the end of the line
    # where a lost study's or trial's place was kept: the line, "study" or "trial"
    placeholders: list[tuple[int, str]] = field(default_factory=list)
    backup: Path | None = None

    def describe(self) -> str:
        shown = storage_label(str(self.path))
        if self.backup is None:
            return f"{shown}: all {self.lines} lines are records; nothing to repair"
        parts = [f"kept {self.lines - len(self.dropped)} of {self.lines} lines"]
        if self.salvaged:
            parts.append(f"kept the record at the end of line(s) {_numbers(self.salvaged)}")
        if self.dropped:
            why = [f"{n} ({self.reasons[n]})" if n in self.reasons else str(n)
                   for n in self.dropped[:10]]  # fmt: skip
            more = len(self.dropped) - len(why)
            parts.append(f"dropped line(s) {', '.join(why)}{f' and {more} more' if more else ''}")
        trials = [n for n, kind in self.placeholders if kind == "trial"]
        studies = [n for n, kind in self.placeholders if kind == "study"]
        if trials:
            parts.append(
                f"line(s) {_numbers(trials)} had created a trial, or named one no line "
                f"created: a trial takes its place, so that later ones keep their numbers "
                f"(what later lines say of it is kept; left RUNNING, the next run fails it and "
                f"queues it again)"
            )
        if studies:
            parts.append(
                f"line(s) {_numbers(studies)} had created a study, or named one no line "
                f"created: a study named accelopt-repair-lost-study-N takes its place (its name "
                f"and directions were lost; accelopt list shows it)"
            )
        return f"repaired {shown}: {'; '.join(parts)}; the original is kept as {self.backup}"


def _numbers(numbers: Sequence[int]) -> str:
    return ", ".join(map(str, numbers))


RECORD_START = b'{"op_code":'


def repair_file(path: str | Path) -> Repair:
    """Rewrite a journal file keeping every good line: ``accelopt storage repair PATH``.

    A line that is not a record Optuna can replay (``Records``) is dropped, except that a
    record at its end (a half line a killed writer left, then a whole one appended after it) is
    kept. Where a later line names a trial that would not exist (its creating line was dropped
    or lost), a trial takes its place, so that every later trial keeps its number; later lines
    fill it in, and one left RUNNING (without an owner) is failed and queued again by the next
    run. A file in another encoding than UTF-8 is refused, not changed. The original is kept
    as ``<name>.broken-<time>``. Stop the workers on the file first: their place in it moves.
    """
    shown = storage_label(str(path))
    path = Path(path)
    if not path.is_file():
        raise AccelOptError(f"{shown} is not a journal file (no such file); give its path")
    backend = JournalFile(str(path))
    with backend.locked():
        data = path.read_bytes()
        lines = re.findall(rb"[^\n]*\n|[^\n]+$", data)  # as a reader splits them: at "\n" only
        for number, line in enumerate(lines, start=1):
            encoding = _foreign_encoding(line)
            if encoding is not None:
                raise AccelOptError(_not_utf8(shown, number, encoding))
        report = Repair(path, lines=len(lines))
        kept = _mended(lines, report, placeholders=True)
        if not _readable(kept):  # a placeholder moved a trial into another study: none then
            report = Repair(path, lines=len(lines))
            kept = _mended(lines, report, placeholders=False)
        changed = report.dropped or report.salvaged or report.placeholders
        if (not changed and data.endswith(b"\n")) or not data:
            return report
        report.backup = _backup(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.repair-")
        with os.fdopen(fd, "wb") as out:
            out.write(b"".join(line + b"\n" for line in kept))
            out.flush()
            os.fsync(out.fileno())
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    return report


def _mended(lines: list[bytes], report: Repair, placeholders: bool) -> list[bytes]:
    """The records of ``lines`` to keep, each checked against those kept before it; what was
    dropped, salvaged or put in place goes into ``report``."""
    records, kept = Records(), list[bytes]()
    lost_at: tuple[int, int] | None = None  # the last line dropped: its number, its place
    for number, line in enumerate(lines, start=1):
        record = line.rstrip(b"\r\n")
        result = _attempt(records, record, not kept)
        bad = result if isinstance(result, BadRecord) else None
        salvage = record.rfind(RECORD_START, 1)
        if bad is not None and salvage > 0:
            found = _attempt(records, record[salvage:], False)
            if not isinstance(found, BadRecord):
                result, record = found, record[salvage:]
                report.salvaged.append(number)
        if isinstance(result, BadRecord) and bad is not None and bad.missing and placeholders:
            # where the lost line was: the last one dropped, if it came after the last line
            # making what it made (else the ids of those would move), else just before this
            made = CREATE_STUDY if bad.missing[0] == "study" else CREATE_TRIAL
            after = _after_last(kept, made)
            at_line, index = lost_at if lost_at and lost_at[1] >= after else (number, len(kept))
            before = list(kept)
            filled = _fill(kept, index, bad.missing, lines[number - 1 :], report)
            if filled is not None:
                result = _attempt(filled, record, not kept)
                if isinstance(result, BadRecord):  # wrong in another way too: no place kept
                    kept[:] = before
                else:
                    records, lost_at = filled, None
                    report.placeholders.append((at_line, bad.missing[0]))
        if isinstance(result, BadRecord):
            report.dropped.append(number)
            report.reasons[number] = str(bad or result)
            lost_at = (number, len(kept))
            continue
        kept.append(record)
    return kept


def _after_last(kept: list[bytes], op: int) -> int:
    """The place in ``kept`` just after its last record with ``op`` (0 if none)."""
    for i in range(len(kept) - 1, -1, -1):
        if json.loads(kept[i].decode("utf-8-sig")).get("op_code") == op:
            return i + 1
    return 0


def _attempt(records: Records, line: bytes, first: bool) -> dict[str, Any] | BadRecord:
    try:
        return records.check(line, first)
    except BadRecord as bad:
        return bad


def _fill(
    kept: list[bytes], index: int, missing: tuple[str, int], rest: list[bytes], report: Repair
) -> Records | None:
    """Put studies or trials at ``kept[index]`` until the one ``missing`` names exists, as the
    lines lost there made them; returns what the lines kept then make, or None (``kept`` as it
    was) where that cannot be: too many for the lines lost, no study to hold a trial, or a later
    line kept that would no longer read."""
    before = Records()
    for i, line in enumerate(kept[:index]):
        before.check(line, first=i == 0)
    kind, wanted = missing
    made = before.next_study if kind == "study" else len(before.trial_study)
    count = wanted - made + 1
    # Each line lost made one at most: those dropped, or one deleted outright.
    if count <= 0 or count > len(report.dropped) + 1:
        return None
    now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    if kind == "study":
        taken = set(before.studies.values())
        names = [n for i in range(len(taken) + count + 1)
                 if (n := f"accelopt-repair-lost-study-{made + i}") not in taken]  # fmt: skip
        objectives = _objectives(rest)
        fill = [json.dumps({"op_code": CREATE_STUDY, "worker_id": "accelopt-storage-repair",
                            "study_name": name, "directions": [0] * objectives},
                           separators=(",", ":")).encode() for name in names[:count]]  # fmt: skip
    else:
        study = before.trial_study[-1] if before.trial_study else None
        if study not in before.studies:
            study = next(iter(before.studies), None)
        if study is None:
            return None
        fill = [json.dumps({"op_code": CREATE_TRIAL, "worker_id": "accelopt-storage-repair",
                            "study_id": study, "datetime_start": now},
                           separators=(",", ":")).encode()] * count  # fmt: skip
    trial = kept[:index] + fill + kept[index:]
    records = Records()
    try:
        for i, line in enumerate(trial):
            records.check(line, first=i == 0)
    except BadRecord:
        return None
    kept[:] = trial
    return records


def _objectives(lines: list[bytes]) -> int:
    """How many objectives a lost study had: as many values as the first COMPLETE trial after
    its loss has (1 when none says)."""
    for line in lines:
        log = _record_or_none(line)
        if log and log.get("state") == TrialState.COMPLETE.value:
            values = log.get("values")
            if isinstance(values, list) and values:
                return len(values)
            if log.get("value") is not None:
                return 1
    return 1


def _record_or_none(line: bytes) -> dict[str, Any] | None:
    try:
        log = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return log if isinstance(log, dict) else None


def _readable(lines: list[bytes]) -> bool:
    records = Records()
    try:
        for i, line in enumerate(lines):
            records.check(line, first=i == 0)
    except BadRecord:
        return False
    return True


# Locks.


@contextlib.contextmanager
def storage_lock(storage: optuna.storages.BaseStorage, url: str, name: str) -> Iterator[None]:
    """Hold the lock that orders the workers of study ``name``.

    A journal file: a file lock beside it (one host). PostgreSQL: a transaction-level advisory
    lock, released when the transaction ends, also when the worker dies. SQLite serves one
    writer (``sole_writer`` refuses a second), which needs no lock.
    """
    if isinstance(storage, optuna.storages.RDBStorage):
        dialect = storage.engine.dialect.name
        if dialect == "sqlite":
            yield
            return
        if dialect != "postgresql":
            raise AccelOptError(f"workers share studies through PostgreSQL or a journal file, "
                                f"not {dialect}")  # fmt: skip
        import sqlalchemy

        with storage.engine.begin() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                         {"key": lock_key(name)})  # fmt: skip
            yield
        return
    from filelock import FileLock

    with FileLock(f"{url}.accelopt-lock"):
        yield


def lock_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# SQLite: which file a URL opens, as SQLAlchemy and SQLite resolve it.

# The VFSes SQLite ships that keep a database in a file it names (memdb keeps it in memory).
_FILE_VFS = frozenset(
    str.split(
        "unix unix-dotfile unix-excl unix-none unix-namedsem unix-posix unix-flock unix-afp "
        "unix-proxy win32 win32-longpath win32-none win32-longpath-none"
    )
)


def is_sqlite(url: str) -> bool:
    """Whether SQLAlchemy opens ``url`` with SQLite (any driver, any spelling it accepts)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).get_backend_name() == "sqlite"
    except Exception:  # no URL: a journal file, or one open_storage refuses
        return False


def sqlite_database(url: str) -> Path | None:
    """The file SQLite opens for ``url``, absolute (symbolic links left as they are); None for
    another storage or a database in memory (nothing another process could share).

    Read as SQLAlchemy hands it to the driver (``sqlite:///rel.db``, ``sqlite:////abs.db``,
    query parameters) and then as SQLite reads a ``file:`` URI under ``uri=true`` (an empty
    or ``localhost`` authority, percent-escapes, ``mode=memory``, ``vfs=memdb``, the last of
    a repeated parameter). A URL whose file cannot be told is refused (``AccelOptError``).

    >>> sqlite_database("sqlite:///file:/tmp/a%2Edb?uri=true&mode=rwc")
    PosixPath('/tmp/a.db')
    """
    from sqlalchemy.engine import make_url

    if not is_sqlite(url):
        return None
    try:
        parsed = make_url(url)
        with warnings.catch_warnings():  # parameters SQLite ignores: open_storage warns
            warnings.simplefilter("ignore")
            (filename, *_), options = parsed.get_dialect()().create_connect_args(parsed)
    except Exception as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AccelOptError(
            f"cannot open storage {storage_label(url)}: {scrub(why, url)}"
        ) from None
    if not isinstance(filename, str):
        raise AccelOptError(f"cannot open storage {storage_label(url)}: it names no file")
    if not options.get("uri") or not filename.startswith("file:"):  # as SQLite: "FILE:" is a name
        # SQLAlchemy made a plain name absolute already (and SQLite makes it so with uri=true)
        return None if filename in ("", ":memory:") else Path.cwd() / filename
    return _sqlite_uri_file(filename, url)


def _sqlite_uri_file(uri: str, url: str) -> Path | None:
    """The file of a SQLite ``file:`` URI, read as ``sqlite3ParseUri`` does."""
    rest = uri[5:]
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise AccelOptError(
                f"cannot open storage {storage_label(url)}: SQLite takes no host in a file: URI "
                f"(only file:///PATH or file://localhost/PATH)"
            )
        rest = slash + rest
    rest = rest.split("#", 1)[0]
    path, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if _sqlite_unquote(key):  # an empty name is ignored; a repeated one: the last counts
            options[_sqlite_unquote(key)] = _sqlite_unquote(value)
    name = _sqlite_unquote(path)
    if options.get("mode") == "memory" or options.get("vfs") == "memdb":
        return None
    if options.get("vfs", "unix") not in _FILE_VFS:
        raise AccelOptError(
            f"cannot tell which file storage {storage_label(url)} is: SQLite's "
            f"vfs={printable(options['vfs'], 40)} is not one of its own; use sqlite:///PATH"
        )
    if name in ("", ":memory:"):  # a temporary database of its own
        return None
    # Not normalised here: "link/.." is where the link points, as SQLite and the system see it.
    return Path.cwd() / name


def _sqlite_unquote(text: str) -> str:
    """SQLite's percent-decoding: ``%HH`` with two hex digits, else as is; ``%00`` ends it."""
    out, i = bytearray(), 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i : i + 1] == b"%" and re.fullmatch(rb"[0-9A-Fa-f]{2}", raw[i + 1 : i + 3]):
            octet = int(raw[i + 1 : i + 3], 16)
            if octet == 0:
                break
            out.append(octet)
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, or None (another storage, SQLite in memory, or a URL whose
    file cannot be told: ``open_storage`` says why)."""
    try:
        return sqlite_database(url)
    except AccelOptError:
        return None


def sqlite_missing(url: str) -> bool:
    """A SQLite storage whose file does not exist yet: nothing is stored in it, and opening it
    would make the file (``accelopt list`` and an interrupted run say so instead).

    >>> sqlite_missing("sqlite:///no/such/file.db"), sqlite_missing("studies.journal")
    (True, False)
    """
    path = sqlite_file(url)
    return path is not None and not path.exists()


def shared_storage(url: str | None, workers: str, default: str = "") -> str:
    """The storage several ``workers`` share: ``url``, else $ACCELOPT_STORAGE, else ``default``;
    never SQLite, whose writers lock each other out.

    >>> shared_storage(None, "2 workers", SHARED_STORAGE)  # doctest: +SKIP
    'accelopt.journal'
    """
    url = storage_url(url, default)
    if not url:
        raise AccelOptError(f"{workers} need a shared --storage: a journal file on one host "
                            f"(e.g. accelopt.journal) or a postgresql:// URL")  # fmt: skip
    if url.strip().startswith("sqlite") or is_sqlite(url):
        raise AccelOptError(SQLITE_WORKERS)
    return url


# Descriptors of SQLite files this process opened to lock (``_OURS``), and those of them kept
# open after their lock while the process has the file open through another one: closing any
# descriptor of a file drops every POSIX lock the process holds on it, SQLite's own among them.
_OURS: set[int] = set()
_KEPT: list[int] = []


@contextlib.contextmanager
def sole_writer(url: str) -> Iterator[None]:
    """While the block runs, be the only accelopt process writing trials to ``url``'s SQLite
    file; refuse with the message ``--workers`` gives where another one is (other storages
    order their writers with ``storage_lock``).

    Two processes on one SQLite file measure grid points twice and lose others, and race to
    create its tables. The lock is on the file itself (``flock``, which SQLite's own locks
    leave alone): every name of one file (a relative or absolute path, a ``file:`` URI, a
    symbolic or hard link) takes the same lock, released when the block ends or the process
    does. A file not there yet is made, empty as SQLite makes it, and removed again if nothing
    was written to it. A URL whose file cannot be told is refused (``sqlite_database``).
    """
    import fcntl

    path = sqlite_database(url)
    opened = None if path is None else _open_for_lock(path, url)
    if path is None or opened is None:  # in memory, or open_storage says what is wrong
        yield
        return
    fd, made = opened
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _let_go(fd)
        raise AccelOptError(
            f"another accelopt process is running trials on {storage_label(url)} (the file "
            f"{path}): {SQLITE_WORKERS}"
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            held, there = os.fstat(fd), os.stat(path)
            if (
                made
                and held.st_size == 0
                and (held.st_dev, held.st_ino)
                == (
                    there.st_dev,
                    there.st_ino,
                )
            ):
                os.unlink(path)  # made here, never written: as if never opened
        fcntl.flock(fd, fcntl.LOCK_UN)
        _let_go(fd)


def _open_for_lock(path: Path, url: str) -> tuple[int, bool] | None:
    """A descriptor of the database file (made empty if it is not there) and whether it was
    made; None where it cannot be opened (no such folder, not allowed)."""
    import stat

    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block the open
    for _ in range(3):
        try:
            fd, made = os.open(path, flags), False
        except FileNotFoundError:
            try:
                fd, made = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                continue  # made by another process meanwhile: open that one
            except OSError:
                return None
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AccelOptError(f"storage {storage_label(url)}: {path} is not a regular file; "
                                f"give the path of a SQLite database file")  # fmt: skip
        _OURS.add(fd)
        return fd, made
    return None


def _let_go(fd: int) -> None:
    """Close ``fd``, or keep it open while this process has its file open through another
    descriptor (SQLAlchemy's); close the descriptors kept earlier that no longer need it."""
    _KEPT.append(fd)
    for kept in list(_KEPT):
        if not _open_elsewhere(kept):
            _KEPT.remove(kept)
            _OURS.discard(kept)
            os.close(kept)


def _open_elsewhere(fd: int) -> bool:
    """Whether another descriptor of this process has ``fd``'s file open (True where the
    system cannot tell)."""
    mine = os.fstat(fd)
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            numbers = [int(n) for n in os.listdir(folder)]
        except (OSError, ValueError):
            continue
        for n in numbers:
            if n in _OURS:  # ours hold no lock of SQLite's
                continue
            try:
                other = os.fstat(n)
            except OSError:  # the listing's own descriptor, closed by now
                continue
            if (other.st_dev, other.st_ino) == (mine.st_dev, mine.st_ino):
                return True
        return False
    return True


# Owners, heartbeats and dead workers.


def owner(trial: optuna.Trial) -> None:
    """Record who runs a trial: a later run finds RUNNING trials whose process is gone."""
    trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})


def heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    """Seconds between heartbeats where the storage keeps them (databases), else None."""
    from optuna.storages._heartbeat import BaseHeartbeat

    if isinstance(storage, BaseHeartbeat):
        return storage.get_heartbeat_interval()
    return None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Beat for ``trial`` while the block runs, where the storage keeps heartbeats (databases).

    The first beat is recorded before the block starts: entered under the study's lock, the
    trial has a heartbeat before any other worker can look at it.
    """
    storage = study._storage
    interval = heartbeat_interval(storage)
    if interval is None:
        yield
        return
    storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is retried; the trial goes on
                storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: optuna.Study) -> bool:
    """On storages with heartbeats: FAIL trials whose heartbeat stopped, queue each once more.

    Returns False where the storage keeps no heartbeats (the caller checks owners instead)."""
    if heartbeat_interval(study._storage) is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return True


def retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Queue a failed trial again with the same parameters, once; returns whether it was.

    Optuna's ``RetryHeartbeatStaleTrialCallback(max_retry=1)``, which keeps the parameters and
    the grid point a trial was given (``fixed_params``) but had not drawn yet, given the trial
    without the user attributes of the failed run (its owner, why it failed, what it half
    measured) and the constraints it had measured (a storage error may come after them), which
    would otherwise show on the retry.
    """
    if trial.system_attrs.get("retry_history"):
        return False  # a retry that failed too: once is enough
    kept = copy.copy(trial)
    kept.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in CARRIED}
    kept.system_attrs = {k: v for k, v in trial.system_attrs.items()
                         if k.partition(":")[0] != CONSTRAINTS}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, kept)
    return True


def retry_owed(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The failed trials whose retry was never queued, in order of number.

    Every failure is queued again once, in a second write after its FAIL: a worker killed
    between the two, or a storage that broke in between (or before a trial could be told
    anything but FAIL), leaves a failure without a retry. Not owed: a retry's own failure (once
    is enough), and a trial stopped by Ctrl-C (``interrupted``: it gave its slot back).
    """
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and not t.system_attrs.get("retry_history")
        and not t.user_attrs.get("interrupted")
        and t.number not in retried
    ]


def recover_stale_trials(study: optuna.Study, *, by_owner: bool = True) -> list[int]:
    """FAIL the RUNNING trials whose worker is gone and queue each again once; returns their
    numbers.

    Gone: the owner process on this host no longer exists (``by_owner``: storages without
    heartbeats), or the trial never got an owner and started ``ORPHAN_GRACE`` seconds ago or
    more (a worker killed between creating it and recording who runs it).
    """
    host = socket.gethostname()
    now = dt.datetime.now()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("owner")
        if who is None:
            started = t.datetime_start
            if started is not None and (now - started).total_seconds() < ORPHAN_GRACE:
                continue
            why = "its worker died before it recorded its owner"
        elif by_owner and who.get("host") == host and not _alive(int(who.get("pid", -1))):
            why = "its worker process is gone"
        else:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "failed", why)
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            retry(study, study._storage.get_trial(t._trial_id))
            recovered.append(t.number)
    return recovered


def recover(study: optuna.Study, log: Callable[[str], None]) -> None:
    """FAIL and queue again the trials of dead workers: by heartbeat where the storage keeps
    them (databases), else by the owner's process id (journal files and SQLite: one host); on
    any storage, the trials that never got an owner. Then queue the retries still owed
    (``retry_owed``): a crash between a FAIL and its retry, here or in any worker, loses no
    point. Call under the study's lock: a worker fails a trial and queues its retry under it,
    so what is owed here is never a retry another worker is about to queue."""
    beats = fail_stale_trials(study)
    stale = recover_stale_trials(study, by_owner=not beats)
    if stale:
        log(f"{study.study_name}: trials {stale} were left RUNNING by a process that is gone: "
            f"marked FAIL and queued again once")  # fmt: skip
    owed = [t.number for t in retry_owed(study.get_trials(deepcopy=False)) if retry(study, t)]
    if owed:
        log(f"{study.study_name}: trials {owed} failed and were never queued again (their "
            f"worker stopped before it could, or the storage failed): queued again "
            f"once")  # fmt: skip


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
