"""Opening a SQLite file that a crash, a full disk, a bad copy or an attacker may have left behind.

SQLite takes a 0-byte file for an empty database and would quietly start a new, empty queue or
index over it. So before SQLite touches an existing file, `damage(path)` judges it by `stat`
alone: empty, shorter than SQLite's 100-byte header, or not a regular file. It never opens the
file: closing any descriptor of a database file drops every POSIX lock this process holds on it,
the locks of SQLite's other connections included (sqlite.org/howtocorrupt.html, 2.2), so a peer
that opened one more connection that way would break its own. Everything else (a truncated file,
a foreign header) SQLite finds itself, holding its locks and reading its journal, and reports as
SQLITE_CORRUPT or SQLITE_NOTADB, which `kind()` sorts as damage.

A missing file is made by `create(path)` whole, in a temporary file beside it that is then linked
into place, so no process ever sees a half-made (0-byte) database at the real name; `connect()`
then opens the real name without creating it.

`kind(exc)` says whose problem an sqlite3 error is: "busy" (another process holds SQLite's lock:
nothing is wrong with the file), "damaged" (the file), or "other" (I/O, permissions, a full disk).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
import urllib.request
from pathlib import Path

HEADER_BYTES = 100  # SQLite's database header, at the start of page 1
_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def kind(exc: sqlite3.Error) -> str:
    """'busy', 'damaged' or 'other' (see the module docstring)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(_BUSY):
        return "busy"
    if name.startswith(_DAMAGED):
        return "damaged"
    text = str(exc).lower()
    if "locked" in text or "busy" in text:  # sqlite3 errors raised without an error code
        return "busy"
    if "malformed" in text or "not a database" in text:
        return "damaged"
    return "other"


def size_of(path: str | os.PathLike) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def damage(path: str | os.PathLike) -> str | None:
    """What is wrong with the SQLite file at `path` as far as its size shows, in words, or None
    if nothing (or it is missing: `create` makes it). Never opens the file (see the module doc)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be examined: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "it is empty, and a database holds at least its header page"
    if st.st_size < HEADER_BYTES:
        return f"shorter than SQLite's {HEADER_BYTES}-byte header: truncated"
    return None


def create(path: str | os.PathLike) -> None:
    """Make an empty SQLite database (WAL mode, page 1 written) at `path` unless a file is there.

    The database is made in a temporary file beside `path` and hard-linked to it: if another
    process made one first, the link fails and theirs is kept.
    """
    path = Path(path)
    if os.path.lexists(path):
        return
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")  # persistent in the header; writes page 1
            db.execute("PRAGMA user_version = 0")  # writes page 1 where WAL mode was refused
        finally:
            db.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        except OSError:  # a file system without hard links: rename, if nobody made one meanwhile
            if os.path.lexists(path):
                return
            os.rename(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


def connect(path: str | os.PathLike, *, timeout_s: float) -> sqlite3.Connection:
    """Open an existing database file (never creating one: a vanished file is an error)."""
    uri = "file:" + urllib.request.pathname2url(os.path.abspath(path)) + "?mode=rw"
    return sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None)
