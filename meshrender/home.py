"""Where a peer keeps its state, and the lock that keeps it to one peer.

`$MESHRENDER_HOME` (by default `$XDG_DATA_HOME/meshrender`, `~/.local/share/meshrender`) holds the
identity key, the chunk store (`store/`), the job database (`jobs.sqlite`) and `results/`.

One peer per home: two peers on one home would share an identity and both coordinate the same
queued jobs. Whatever runs a peer takes `HomeLock` first: an exclusive `flock` on `peer.lock` in
the home, with the holder's pid written into the file for the message a second one gets
(`HomeInUse`: "another meshrender peer is using HOME (pid N)"). The kernel drops a flock when
its holder dies, even by kill -9, so there is no stale lock to clean up; the file itself stays.
The descriptor is close-on-exec and closed in forked children, so a render child never keeps
the lock alive. Within one process the lock nests (the CLI takes it before it opens the store
and the queue, then `Peer.run` takes it again), but only one `Peer.run` at a time holds it
(`peer=True`). Queue clients (`submit`, `jobs`, `cancel` without `--to`, the TUI's queue view)
take no lock: SQLite shares the queue and the store between processes by design.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

from .errors import MeshrenderError

STORE_QUOTA_BYTES_DEFAULT = 20 << 30  # 20 GiB: room for dozens of production scenes on a laptop
LOCK_NAME = "peer.lock"
PID_WAIT_S = 0.5  # a holder writes its pid right after taking the lock: wait this long to read it
PID_BYTES_MAX = 32  # a pid and a newline; anything longer in the file is not one of ours


class HomeInUse(MeshrenderError):
    """Another peer runs on this home (in another process, or a second `Peer.run` in this one)."""

    def __init__(self, home: Path, pid: int | None):
        self.home, self.pid = home, pid
        super().__init__(f"another meshrender peer is using {home} (pid {pid if pid else '?'})")


def meshrender_home(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MESHRENDER_HOME")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "meshrender"


def store_dir(home: str | os.PathLike | None = None) -> Path:
    return meshrender_home(home) / "store"


def store_quota_bytes() -> int:
    """The store's quota: `$MESHRENDER_STORE_QUOTA` (bytes, or with a K/M/G/T suffix) or 20 GiB."""
    text = os.environ.get("MESHRENDER_STORE_QUOTA", "").strip().upper()
    if not text:
        return STORE_QUOTA_BYTES_DEFAULT
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1], 1)
    digits = text[:-1] if scale > 1 else text
    try:
        return int(float(digits) * scale)
    except ValueError:
        raise ValueError(f"MESHRENDER_STORE_QUOTA={text!r} is not a size like 500M or 20G") from None


# ---------------------------------------------------------------------------- one peer per home


class _Held:
    """This process's hold on one home's lock file: the locked descriptor and who nests on it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.count = 0
        self.peer = False  # a Peer.run holds it


_held: dict[tuple[int, int], _Held] = {}  # (st_dev, st_ino) of a lock file -> this process's hold
_held_guard = threading.Lock()  # the TUI runs its peer in a thread: holds are taken from several


def _forget_after_fork() -> None:
    """A forked child must not keep its parent's locks alive: close its copies of the descriptors."""
    global _held_guard
    for held in _held.values():
        try:
            os.close(held.fd)
        except OSError:
            pass
    _held.clear()
    _held_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


class HomeLock:
    """The exclusive lock on a home (see the module docstring). `acquire()` raises HomeInUse at
    once, never waits; use it as a context manager, which releases on exit."""

    def __init__(self, home: str | os.PathLike, *, peer: bool = False):
        self.home = Path(home)
        self.path = self.home / LOCK_NAME
        self.peer = peer
        self._key: tuple[int, int] | None = None

    def __enter__(self) -> HomeLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> HomeLock:
        if self._key is not None:
            raise RuntimeError(f"{self.path}: this HomeLock is held already")
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = exc.strerror or exc
            raise MeshrenderError(f"{self.home}: cannot create the peer's home: {problem}") from None
        with _held_guard:
            while True:
                fd = self._open()
                st = os.fstat(fd)
                key = (st.st_dev, st.st_ino)
                held = _held.get(key)
                if held is not None:  # this process holds it already: nest
                    os.close(fd)
                    break
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise HomeInUse(self.home, self._holder_pid()) from None
                    raise MeshrenderError(f"{self.path}: cannot lock: {exc.strerror or exc}") from None
                if not self._still_named(fd):  # someone removed the file we locked: lock the new one
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                held = _held[key] = _Held(fd)
                break
            if self.peer:
                if held.peer:  # a second Peer.run in this process (held.count > 0: nothing to drop)
                    raise HomeInUse(self.home, os.getpid())
                held.peer = True
            held.count += 1
            self._key = key
        return self

    def release(self) -> None:
        with _held_guard:
            key, self._key = self._key, None
            held = _held.get(key) if key is not None else None
            if held is None:
                return
            if self.peer:
                held.peer = False
            held.count -= 1
            if held.count <= 0:
                self._drop(key, held)

    @staticmethod
    def _drop(key: tuple[int, int], held: _Held) -> None:
        del _held[key]
        os.close(held.fd)  # the flock goes with the last descriptor of the file description

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                problem = "is a symbolic link; the peer's lock must be a plain file"
            else:
                problem = f"cannot open the peer's lock: {exc.strerror or exc}"
            raise MeshrenderError(f"{self.path}: {problem}") from None

    @classmethod
    def in_use(cls, home: str | os.PathLike) -> HomeInUse | None:
        """Whether another process's peer holds `home` now (the error it would give), or None."""
        try:
            with cls(home):
                return None
        except HomeInUse as exc:
            return exc

    def _still_named(self, fd: int) -> bool:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        fst = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)

    def _holder_pid(self) -> int | None:
        """The pid the holder wrote (it writes right after locking: wait a moment for it)."""
        deadline = time.monotonic() + PID_WAIT_S
        while True:
            try:
                with open(self.path, "rb") as f:
                    text = f.read(PID_BYTES_MAX + 1)
            except OSError:
                text = b""
            if text.strip().isdigit() and len(text) <= PID_BYTES_MAX:
                return int(text)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
