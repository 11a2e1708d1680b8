"""How chunks are kept: one zstd file per chunk under its hash, and a SQLite index beside them.

Writing a chunk: hash the bytes (a claimed name that does not match refuses the chunk), compress
them into a file in this session's folder under `tmp/`, fsync it, and then — holding SQLite's write
lock — `os.replace` it to `blobs/ab/cd/<hash>.zst`, fsync that folder and commit the index row. A
blob therefore only ever appears under its real name whole; a crash between rename and commit
leaves an *orphan* (a good blob with no row) that `verify` re-indexes; a crash before the rename
leaves a temp file that the next open deletes.

Reading a chunk: the frame must record a content size equal to the indexed raw size (never above
`CHUNK_BYTES_MAX`), so decompression allocates at most that much — a zstd bomb is refused before it
expands. The bytes are re-hashed; a blob that fails is moved to `quarantine/`, its row dropped, and
the caller gets `CorruptChunkError`. A row whose file has gone is dropped (`MissingChunkError`).

The index (`index.sqlite3`, WAL) holds chunks (sizes, added and last-access times), scenes (a
manifest hash, its member chunks and caller-given `meta`) and pins. Stored bytes are kept in a
one-row `totals` table by triggers, so quota checks are O(1). Eviction is LRU by chunk last access
and never takes a chunk of a pinned scene. Last-access updates from reads are buffered and written
with the next write transaction (or after `TOUCH_FLUSH_S`), so reading does not cost a commit each.

Concurrency: one `ChunkStore` per thread (the SQLite connection refuses use from another thread).
Several processes may open the same root: every rename, eviction and quarantine happens inside a
`BEGIN IMMEDIATE` transaction, so they serialise on SQLite's lock (waiting up to `BUSY_TIMEOUT_S`),
and each open instance writes temp files in its own locked folder, which only a dead owner's
successor removes.

Durability: `synchronous=FULL`. Blob files are fsynced before their row is committed; with FULL
the commit itself is durable too, so after a power cut a `put` that returned, a `pin` and an
`add_scene` are all still there (NORMAL could roll back the last commits: harmless for chunk rows,
which `verify` re-adopts, but a lost pin would let a queued job's scene be evicted). The cost is one
WAL fsync per commit — one per `put`/`put_many`, not per read (see the throughput note in the tests).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import zstandard

from meshrender import dbfile
from meshrender.errors import MeshrenderError
from meshrender.store.hashing import chunk_hash, is_chunk_hash

try:  # POSIX: temp-folder ownership is an flock held for the life of the store
    import fcntl
except ImportError:  # pragma: no cover - Windows: an open file cannot be deleted, which serves instead
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CHUNK_BYTES_MAX = 16 << 20  # raw size cap for one chunk; decompression never produces more (zstd-bomb guard)
# zstd's worst-case expansion of CHUNK_BYTES_MAX (ZSTD_COMPRESSBOUND plus slack): a bigger file is not ours
STORED_BYTES_MAX = CHUNK_BYTES_MAX + (CHUNK_BYTES_MAX >> 8) + 4096
COMPRESS_THREADS = max(1, min(4, os.cpu_count() or 1))  # zstd releases the GIL: a batch uses every core
COMPRESS_PARALLEL_BYTES = 1 << 20  # below this a batch is compressed inline: thread hand-off costs more
ZSTD_LEVEL = 3  # ~4 GB/s here on the mixed data the store sees; higher levels cost more than disk saved
BUSY_TIMEOUT_S = 30.0  # another process holds the write lock for one batch of renames + a commit, far less
TOUCH_PENDING_MAX = 4096  # last-access updates buffered in memory before a write flushes them
TOUCH_FLUSH_S = 30.0  # ... or this long after the oldest buffered one; LRU needs no finer resolution
META_BYTES_MAX = 64 << 10  # a scene's human-readable meta (names, notes): JSON, not content
REASON_CHARS_MAX = 200  # a pin reason names a job or a user action, e.g. "job:<64 hex>"
PINS_PER_SCENE_MAX = 4096  # one per queued/running job on the scene; more is a leak in the caller
SCENE_CHUNKS_MAX = 1 << 20  # members of one scene: ~64 GiB at a 64 KiB average chunk
PUT_MANY_CHUNKS_MAX = 1 << 16  # one put_many is one index transaction; split bigger batches
# new blobs in one put_many from which one syncfs stands for an fsync per file and per folder: above
# the writer's receive batches (its BATCH_CHUNKS_MAX), so only bulk imports of many chunks take it
SYNCFS_FILES_MIN = 64
EVICT_BATCH_CHUNKS = 4096  # rows deleted per transaction by eviction and gc, bounding lock time and memory
SQL_IN_MAX = 500  # hashes per `IN (...)` query, under SQLite's bound-variable limit
GC_GRACE_S = 3600.0  # gc spares unreferenced chunks used this recently: a scene may be being added
QUARANTINE_FILES_MAX = 256  # corrupt blobs kept for inspection; older ones are deleted
REPORT_HASHES_MAX = 10_000  # hashes listed by verify per category; the totals count all of them
SCHEMA_VERSION = 2  # 2: chunks.frame_hash

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    hash         TEXT PRIMARY KEY,
    raw_bytes    INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    added_s      REAL NOT NULL,
    access_s     REAL NOT NULL,
    frame_hash   BLOB  -- BLAKE3 of the blob file as written (see get_frame); NULL: not known
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_access ON chunks (access_s);

CREATE TABLE IF NOT EXISTS totals (
    one          INTEGER PRIMARY KEY CHECK (one = 1),
    chunks       INTEGER NOT NULL,
    raw_bytes    INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS chunks_insert AFTER INSERT ON chunks BEGIN
    UPDATE totals SET chunks = chunks + 1, raw_bytes = raw_bytes + NEW.raw_bytes,
                      stored_bytes = stored_bytes + NEW.stored_bytes;
END;
CREATE TRIGGER IF NOT EXISTS chunks_delete AFTER DELETE ON chunks BEGIN
    UPDATE totals SET chunks = chunks - 1, raw_bytes = raw_bytes - OLD.raw_bytes,
                      stored_bytes = stored_bytes - OLD.stored_bytes;
END;
CREATE TRIGGER IF NOT EXISTS chunks_resize AFTER UPDATE OF raw_bytes, stored_bytes ON chunks BEGIN
    UPDATE totals SET raw_bytes = raw_bytes - OLD.raw_bytes + NEW.raw_bytes,
                      stored_bytes = stored_bytes - OLD.stored_bytes + NEW.stored_bytes;
END;

CREATE TABLE IF NOT EXISTS scenes (
    scene_id    TEXT PRIMARY KEY,
    total_bytes INTEGER NOT NULL,
    added_s     REAL NOT NULL,
    access_s    REAL NOT NULL,
    meta        TEXT NOT NULL DEFAULT '{}'
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS scene_chunks (
    scene_id TEXT NOT NULL REFERENCES scenes (scene_id) ON DELETE CASCADE,
    hash     TEXT NOT NULL,
    PRIMARY KEY (scene_id, hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scene_chunks_by_hash ON scene_chunks (hash);

CREATE TABLE IF NOT EXISTS pins (
    scene_id TEXT NOT NULL REFERENCES scenes (scene_id) ON DELETE CASCADE,
    reason   TEXT NOT NULL,
    since_s  REAL NOT NULL,
    PRIMARY KEY (scene_id, reason)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS kept_chunks (
    reason TEXT NOT NULL,
    hash   TEXT NOT NULL,
    PRIMARY KEY (reason, hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kept_chunks_by_hash ON kept_chunks (hash);
"""

# a chunk is protected from eviction while any scene that holds it is pinned, or while it is kept
# for a reason of its own (a job's unit results belong to no scene)
_PINNED = (
    "(EXISTS (SELECT 1 FROM scene_chunks sc JOIN pins p ON p.scene_id = sc.scene_id WHERE sc.hash = c.hash)"
    " OR EXISTS (SELECT 1 FROM kept_chunks k WHERE k.hash = c.hash))"
)
_SCENE_COMPLETE = """NOT EXISTS (SELECT 1 FROM scene_chunks sc WHERE sc.scene_id = s.scene_id
                     AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.hash = sc.hash))"""


_tls = threading.local()
_Pending = tuple[Path, int, int, bytes]  # written, not yet indexed: temp file, raw, stored, frame hash


def _compress_in_thread(view: memoryview) -> bytes:
    """zstd with a compressor per thread (a ZstdCompressor must not be shared between threads)."""
    cctx = getattr(_tls, "cctx", None)
    if cctx is None:
        cctx = _tls.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return cctx.compress(view)


class StoreError(MeshrenderError):
    """The chunk store cannot do what was asked (disk full, locked, limit exceeded, damaged index)."""


class CorruptChunkError(StoreError):
    """A chunk's bytes do not match its name: refused on write, quarantined on read."""

    def __init__(self, hash: str, path: str | os.PathLike[str] | None, problem: str):
        self.hash = hash
        self.path = None if path is None else str(path)
        self.problem = problem
        where = f" (blob moved to {self.path})" if self.path else ""
        super().__init__(f"chunk {hash}: {problem}{where}")


class MissingChunkError(StoreError):
    """The store does not hold this chunk (never stored, evicted, or its blob file was lost)."""

    def __init__(self, hash: str, problem: str = "not in the store"):
        self.hash = hash
        super().__init__(f"chunk {hash}: {problem}")


def _write_fully(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (a separate function so tests can make the disk fill up)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _load_syncfs():
    """libc's syncfs(2) (Linux), or None: one call that makes a whole file system durable."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # pragma: no cover - no syncfs in this libc
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_SYNCFS = _load_syncfs()


def _syncfs(path: Path) -> None:
    """Flush every file and folder of the file system holding `path`, and wait for it."""
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it, a new subfolder) durable."""
    if os.name != "posix":  # pragma: no cover - folders cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame_size(frame: bytes) -> int:
    """The content size a zstd frame records; -1 when it records none or is no frame."""
    try:
        return zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        return -1


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("chunk data must be a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _check_hash(h: object, what: str = "chunk hash") -> str:
    if not is_chunk_hash(h):
        raise ValueError(f"not a {what} (64 lowercase hex characters): {h!r:.80}")
    return h  # type: ignore[return-value]


class ChunkStore:
    """A content-addressed chunk store rooted at a folder (see the module docstring).

    `quota_bytes` caps the bytes on disk (compressed); `None` means no cap. `clock` gives the
    access times that LRU eviction orders by. `durable=False` skips the fsyncs (and commits with
    `synchronous=NORMAL`) — for throwaway stores in tests and simulations only: a power cut may
    then lose or tear recently written blobs (a process crash still cannot).

    Not thread-safe: use one instance per thread (each has its own SQLite connection); any number
    of instances, in any processes, may share one root.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        quota_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        durable: bool = True,
    ):
        if quota_bytes is not None and quota_bytes < 0:
            raise ValueError(f"quota_bytes must be >= 0 or None, not {quota_bytes}")
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._clock = clock
        self._durable = durable
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self._quarantine = self.root / "quarantine"
        self._touches: dict[str, float] = {}
        self._touches_since: float | None = None
        self._seq = 0
        # one (de)compression context per instance, like the connection: an instance is one thread's
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        self._pool: ThreadPoolExecutor | None = None  # started on the first large batch
        self._dctx = zstandard.ZstdDecompressor()
        self._db: sqlite3.Connection | None = None
        self._session: Path | None = None
        self._session_lock: int | None = None
        try:
            for d in (self.root, self._blobs, self._tmp, self._quarantine):
                d.mkdir(parents=True, exist_ok=True)
            self._clean_tmp()
            self._open_session()
            self._db = self._open_index()
        except OSError as e:
            self.close()
            raise self._os_error(e, "opening the store") from e
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- opening and closing

    def _open_index(self) -> sqlite3.Connection:
        path = self.root / "index.sqlite3"
        problem = dbfile.damage(path)  # SQLite would take an empty file for an empty index
        if problem is not None:
            raise StoreError(self._damaged(problem))
        try:
            dbfile.create(path)  # a missing index is made whole, never seen half-made
            db = dbfile.connect(path, timeout_s=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{path}: cannot open the chunk index: {e}") from e
        try:
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":  # e.g. a network file system without shared memory
                log.warning(
                    "%s: SQLite refused WAL mode (using %s); readers will wait on writers", path, mode
                )
            db.execute(f"PRAGMA synchronous = {'FULL' if self._durable else 'NORMAL'}")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("BEGIN IMMEDIATE")
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{path}: index schema version {version} is newer than this meshrender's "
                        f"({SCHEMA_VERSION}); upgrade meshrender to open this store"
                    )
                for statement in _split_sql(_SCHEMA):
                    db.execute(statement)
                columns = {r[1] for r in db.execute("PRAGMA table_info(chunks)")}
                if "frame_hash" not in columns:  # a version 1 store: its rows keep the full check
                    db.execute("ALTER TABLE chunks ADD COLUMN frame_hash BLOB")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            db.close()
            raise self._sql_error(e, "opening the index") from e
        except BaseException:
            db.close()
            raise
        return db

    def _open_session(self) -> None:
        """Create and lock this instance's temp folder, `tmp/<token>/` guarded by `tmp/<token>.lock`."""
        while True:
            token = f"{os.getpid()}-{secrets.token_hex(6)}"
            lock_path = self._tmp / f"{token}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:  # a cleaner may have taken and removed the file before we locked it: start over
                    same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            self._session_lock = fd
            self._session = self._tmp / token
            self._session.mkdir()
            return

    def _clean_tmp(self) -> int:
        """Delete temp folders whose owner has gone (its lock is free); returns files removed."""
        removed = 0
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        names = {e.name for e in entries}
        for entry in entries:
            path = Path(entry.path)
            if self._session is not None and path in (self._session, self._session.with_suffix(".lock")):
                continue
            if entry.name.endswith(".lock"):
                token = entry.name[: -len(".lock")]
                fd = self._take_stale_lock(path)
                if fd is None:
                    continue  # owner alive
                try:
                    removed += _remove_tree(self._tmp / token)
                    path.unlink(missing_ok=True)
                finally:
                    os.close(fd)
            elif entry.is_dir(follow_symlinks=False):
                if f"{entry.name}.lock" not in names:  # its owner's lock already gone: owner dead
                    removed += _remove_tree(path)
            else:  # a stray file directly in tmp/: nothing writes there
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("%s: removed %d leftover temp file(s) from interrupted writes", self._tmp, removed)
        return removed

    @staticmethod
    def _take_stale_lock(path: Path) -> int | None:
        """An fd holding `path`'s lock if its owner is gone, else None."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        if fcntl is None:  # pragma: no cover - Windows: a live owner's open lock file cannot be deleted
            os.close(fd)
            try:
                path.unlink()
            except PermissionError:
                return None
            return os.open(os.devnull, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def close(self) -> None:
        """Flush buffered access times, close the index and give up this instance's temp folder."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._db is not None:
            try:
                self._flush_touches()
            except StoreError as e:
                log.warning("%s: last-access times not saved at close: %s", self.root, e)
            self._db.close()
            self._db = None
        if self._session is not None:
            _remove_tree(self._session)
            (self._tmp / f"{self._session.name}.lock").unlink(missing_ok=True)
            self._session = None
        if self._session_lock is not None:
            os.close(self._session_lock)
            self._session_lock = None

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- paths and transactions

    def blob_path(self, h: str) -> Path:
        """Where chunk `h` lives on disk (whether or not it is stored)."""
        _check_hash(h)
        return self._blobs / h[:2] / h[2:4] / f"{h}.zst"

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.root}: the chunk store is closed")
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[list[Callable[[], None]]]:
        """A write transaction holding SQLite's lock across processes.

        Yields a list of undo callbacks: run (still holding the lock) if the body or the commit
        fails, e.g. to unlink blobs renamed into place whose rows will not be committed.
        """
        db = self._conn
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise self._sql_error(e, "taking the index write lock") from e
        undo: list[Callable[[], None]] = []
        try:
            self._write_touches(db)
            yield undo
            db.execute("COMMIT")
        except BaseException as exc:
            for fn in reversed(undo):
                try:
                    fn()
                except OSError as e:
                    log.warning("%s: undo after failed write: %s", self.root, e)
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._sql_error(exc, "updating the index") from exc
            if isinstance(exc, OSError):
                raise self._os_error(exc, "updating the store") from exc
            raise

    def _sql_error(self, e: sqlite3.Error, doing: str) -> StoreError:
        text = str(e)
        if "full" in text:
            return StoreError(f"{self.root}: no space left on device while {doing}; nothing was changed")
        kind = dbfile.kind(e)
        if kind == "busy":
            return StoreError(
                f"{self.root}: the chunk index is in use by another process, which held its lock for over "
                f"{BUSY_TIMEOUT_S:g} s while {doing} ({text}); nothing is wrong with the store: try again"
            )
        if kind == "damaged":
            return StoreError(self._damaged(f'SQLite says "{text}"'))
        return StoreError(f"{self.root}: index error while {doing}: {text}")

    def _damaged(self, problem: str) -> str:
        path = self.root / "index.sqlite3"
        size = dbfile.size_of(path)
        held = f"{size:,} bytes" if size is not None else "size unknown"
        return (
            f"{path}: the chunk index is damaged ({held}): {problem}. Nothing was changed. Keep a copy "
            "of it, then move it aside and run `meshrender store verify`: the chunk files are indexed "
            "again (scenes must be added or fetched again)"
        )

    def _os_error(self, e: OSError, doing: str) -> StoreError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(
                f"{self.root}: no space left on device while {doing}; nothing from this call was stored "
                "(free disk space or lower the store quota)"
            )
        where = f" ({e.filename})" if e.filename else ""
        return StoreError(f"{self.root}: {doing} failed: {e.strerror or e}{where}")

    # ---------------------------------------------------------------- last-access buffering

    def _touch(self, h: str) -> None:
        now = self._clock()
        self._touches[h] = now
        if self._touches_since is None:
            self._touches_since = now
        if len(self._touches) >= TOUCH_PENDING_MAX or now - self._touches_since >= TOUCH_FLUSH_S:
            try:
                self._flush_touches()
            except StoreError as e:  # LRU order is advisory: losing some touches costs nothing else
                log.warning("%s: dropped %d last-access updates: %s", self.root, len(self._touches), e)
                self._touches.clear()
                self._touches_since = None

    def _flush_touches(self) -> None:
        if self._touches:
            with self._write():
                pass  # _write writes the touches

    def _write_touches(self, db: sqlite3.Connection) -> None:
        if self._touches:
            db.executemany(
                "UPDATE chunks SET access_s = max(access_s, ?) WHERE hash = ?",
                [(t, h) for h, t in self._touches.items()],
            )
            self._touches.clear()
            self._touches_since = None

    # ---------------------------------------------------------------- writing

    def put(
        self,
        data: bytes | bytearray | memoryview,
        *,
        expect_hash: str | None = None,
        frame: bytes | None = None,
    ) -> tuple[str, bool]:
        """Store one chunk; returns (hash, newly stored).

        With `expect_hash`, bytes that hash to anything else raise `CorruptChunkError` and nothing
        is stored. A chunk already held is not rewritten (its last access is touched). `frame` is a
        zstd frame the caller decompressed `data` from (a peer's `get_frame`): kept as the blob when
        it records `data`'s size, which spares compressing again; ignored otherwise.
        """
        return self._put_batch([(data, expect_hash, frame)])[0]

    def put_many(
        self, chunks: Iterable[bytes | bytearray | memoryview | tuple[bytes | bytearray | memoryview, str]]
    ) -> list[tuple[str, bool]]:
        """Store many chunks in one index transaction; each item is data, (data, expect_hash) or
        (data, expect_hash, frame) with `frame` as for `put`.

        All or nothing: a bad hash, an oversized chunk or a full disk anywhere in the batch stores
        none of it (chunks held before stay held). At most `PUT_MANY_CHUNKS_MAX` items.
        """
        items = ((c + (None, None))[:3] if isinstance(c, tuple) else (c, None, None) for c in chunks)
        return self._put_batch(items)

    def _put_batch(self, items: Iterable[tuple[Any, str | None, bytes | None]]) -> list[tuple[str, bool]]:
        hashes: list[str] = []
        first: list[bool] = []
        pending: dict[str, _Pending] = {}  # hash -> (temp file, raw bytes, stored bytes, frame hash)
        todo: list[tuple[str, memoryview]] = []  # new chunks, compressed together below
        framed: list[tuple[str, memoryview, bytes]] = []  # new chunks that came with a usable frame
        seen: set[str] = set()
        try:
            for n, (data, expect, frame) in enumerate(items):
                if n >= PUT_MANY_CHUNKS_MAX:
                    raise StoreError(
                        f"{self.root}: put_many given over {PUT_MANY_CHUNKS_MAX} chunks; split the batch"
                    )
                view = _as_bytes_view(data)
                if view.nbytes > CHUNK_BYTES_MAX:
                    raise StoreError(
                        f"{self.root}: chunk of {view.nbytes} bytes is over the {CHUNK_BYTES_MAX}-byte limit"
                    )
                if expect is not None:
                    _check_hash(expect, "expected chunk hash")
                h = chunk_hash(view)
                if expect is not None and h != expect:
                    raise CorruptChunkError(expect, None, f"bytes hash to {h}, not to their claimed name")
                hashes.append(h)
                first.append(h not in seen)
                if h in seen:
                    continue
                seen.add(h)
                if self._present(h):
                    self._touch(h)
                    continue
                if frame is not None and _frame_size(frame) == view.nbytes and len(frame) <= STORED_BYTES_MAX:
                    framed.append((h, view, frame))
                else:
                    todo.append((h, view))
            # many small chunks (a scene of many tiny meshes): a syncfs before the renames and one
            # after them stand for an fsync of every temp file and of every shard folder
            batch = self._durable and _SYNCFS is not None and len(framed) + len(todo) >= SYNCFS_FILES_MIN
            for h, view, blob in framed:
                pending[h] = self._write_tmp(h, view, blob, sync=not batch)
            for (h, view), blob in zip(todo, self._compress_all([v for _, v in todo]), strict=True):
                pending[h] = self._write_tmp(h, view, blob, sync=not batch)
            if batch and pending:
                self._sync_all(self._session)
            newly = self._commit(pending, batch_sync=batch)
        except BaseException:
            for tmp, *_ in pending.values():
                tmp.unlink(missing_ok=True)
            raise
        if newly and self.quota_bytes is not None:
            try:
                self._enforce_quota(protect=newly)
            except StoreError as e:  # the chunks are stored; eviction is retried by the next put or gc
                log.warning("%s: could not enforce the quota after a put: %s", self.root, e)
        return [(h, is_first and h in newly) for h, is_first in zip(hashes, first, strict=True)]

    def _present(self, h: str) -> bool:
        """Indexed and its blob file exists (a stat: a row whose file vanished gets rewritten)."""
        row = self._conn.execute("SELECT 1 FROM chunks WHERE hash = ?", (h,)).fetchone()
        return row is not None and self.blob_path(h).exists()

    def _compress_all(self, views: list[memoryview]) -> list[bytes]:
        if COMPRESS_THREADS == 1 or len(views) < 2 or sum(v.nbytes for v in views) < COMPRESS_PARALLEL_BYTES:
            return [self._cctx.compress(v) for v in views]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(COMPRESS_THREADS, thread_name_prefix="chunkstore-zstd")
        return list(self._pool.map(_compress_in_thread, views))

    def _sync_all(self, path: Path) -> None:
        try:
            _syncfs(path)
        except OSError as e:
            raise self._os_error(e, "flushing new chunks to disk") from e

    def _write_tmp(self, h: str, view: memoryview, blob: bytes, *, sync: bool = True) -> _Pending:
        """Write a compressed chunk to a new temp file and fsync it (unless the caller syncs the
        batch); returns (path, raw, stored bytes, the blob's own hash)."""
        assert self._session is not None
        self._seq += 1
        tmp = self._session / f"{h}.{self._seq}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            try:
                _write_fully(fd, blob)
                if self._durable and sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise self._os_error(e, f"writing chunk {h}") from e
        return tmp, view.nbytes, len(blob), blake3.blake3(blob).digest()

    def _commit(self, pending: dict[str, _Pending], *, batch_sync: bool = False) -> set[str]:
        """Rename prepared temp files into place and index them, in one transaction (the folders
        made durable by one syncfs when `batch_sync`, else an fsync each)."""
        if not pending:
            return set()
        newly: set[str] = set()
        with self._write() as undo:
            now = self._clock()
            db = self._conn
            dirs: set[Path] = set()
            rows = []
            for h, (tmp, raw, stored, frame_hash) in pending.items():
                final = self.blob_path(h)
                held = db.execute("SELECT 1 FROM chunks WHERE hash = ?", (h,)).fetchone() is not None
                if held and final.exists():  # another process stored it meanwhile
                    tmp.unlink()
                    db.execute("UPDATE chunks SET access_s = max(access_s, ?) WHERE hash = ?", (now, h))
                    continue
                dirs |= self._make_shard(final.parent)
                os.replace(tmp, final)
                undo.append(lambda final=final: final.unlink(missing_ok=True))
                rows.append((h, raw, stored, now, now, frame_hash))
                newly.add(h)
            if self._durable and batch_sync and dirs:
                self._sync_all(self._blobs)
            elif self._durable:
                for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                    _fsync_dir(d)
            db.executemany(
                """INSERT INTO chunks (hash, raw_bytes, stored_bytes, added_s, access_s, frame_hash)
                   VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO UPDATE SET raw_bytes = excluded.raw_bytes,
                       stored_bytes = excluded.stored_bytes, access_s = excluded.access_s,
                       frame_hash = excluded.frame_hash""",
                rows,
            )
        return newly

    def _make_shard(self, shard: Path) -> set[Path]:
        """Create a shard folder if needed; returns the folders whose entries need an fsync."""
        if shard.is_dir():
            return {shard}
        shard.mkdir(parents=True, exist_ok=True)
        return {shard, shard.parent, self._blobs}

    # ---------------------------------------------------------------- reading

    def get(self, h: str) -> bytes:
        """The bytes of chunk `h`, re-hashed; `MissingChunkError` or `CorruptChunkError` otherwise."""
        return self._get(h)[0]

    def get_frame(self, h: str) -> tuple[bytes, int]:
        """Chunk `h` as its stored zstd frame and its raw size: what goes on the wire, with no
        compressing again. Checked without decompressing when the index knows the blob's own
        hash (`frame_hash`, taken when the blob was written, right after its bytes were checked
        against `h`): the same frame bytes decompress to the same checked bytes. A blob whose
        hash differs (rot, a torn write) or a row from before frame hashes takes `get`'s full
        check, which quarantines a corrupt blob. For serving that is a BLAKE3 of the compressed
        bytes instead of a decompression and a BLAKE3 of 2-3x as many: 11 ms instead of 140 ms
        for a 33 MB scene here."""
        _check_hash(h)
        row = self._conn.execute(
            "SELECT raw_bytes, stored_bytes, frame_hash FROM chunks WHERE hash = ?", (h,)
        ).fetchone()
        if row is not None and row[2] is not None:
            raw, stored, frame_hash = row
            try:
                blob, _ = self._read_blob(self.blob_path(h), stored)
            except FileNotFoundError:
                blob = None  # the full path below drops the row
            except OSError as e:
                raise self._os_error(e, f"reading chunk {h}") from e
            if blob is not None and blake3.blake3(blob).digest() == frame_hash:
                self._touch(h)
                return blob, raw
        data, blob = self._get(h)
        return blob, len(data)

    def _get(self, h: str) -> tuple[bytes, bytes]:
        _check_hash(h)
        for _attempt in range(3):  # retried only when another process replaced the blob mid-read
            row = self._conn.execute(
                "SELECT raw_bytes, stored_bytes FROM chunks WHERE hash = ?", (h,)
            ).fetchone()
            if row is None:
                raise MissingChunkError(h)
            raw, stored = row
            path = self.blob_path(h)
            try:
                blob, st = self._read_blob(path, stored)
            except FileNotFoundError:
                if self._forget_missing(h):
                    raise MissingChunkError(h, "its blob file is gone (index entry dropped)") from None
                continue
            except OSError as e:
                raise self._os_error(e, f"reading chunk {h}") from e
            data, problem = self._decode(h, blob, raw)
            if problem is None:
                assert data is not None and blob is not None
                self._touch(h)
                return data, blob
            qpath = self._quarantine_blob(h, path, st, problem)
            if qpath is not None:
                raise CorruptChunkError(h, qpath, problem)
        raise StoreError(f"{self.root}: chunk {h} kept changing while being read")

    @staticmethod
    def _read_blob(path: Path, stored: int | None) -> tuple[bytes | None, os.stat_result]:
        """The blob's bytes (None if its size is wrong, without reading it) and its fstat."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            limit = STORED_BYTES_MAX if stored is None else stored
            if st.st_size > limit or (stored is not None and st.st_size != stored):
                return None, st
            return f.read(st.st_size), st  # not read(limit): that would allocate the limit up front

    def _decode(self, h: str, blob: bytes | None, raw: int | None) -> tuple[bytes | None, str | None]:
        """Decompress (allocating at most the indexed raw size), re-hash: (data, None) or (None, problem)."""
        if blob is None:
            return None, "blob file has the wrong size"
        try:
            claimed = zstandard.frame_content_size(blob)
        except zstandard.ZstdError as e:
            return None, f"blob is not a zstd frame ({e})"
        if claimed < 0:
            return None, "zstd frame does not record its content size"
        cap = CHUNK_BYTES_MAX if raw is None else min(raw, CHUNK_BYTES_MAX)
        if claimed > cap or (raw is not None and claimed != raw):
            return None, f"zstd frame claims {claimed} bytes, expected {cap if raw is None else raw} at most"
        try:  # with a recorded content size, python-zstandard allocates exactly that and fails beyond it
            data = self._dctx.decompress(blob)
        except zstandard.ZstdError as e:
            return None, f"blob does not decompress ({e})"
        if len(data) != claimed:
            return None, f"blob decompresses to {len(data)} bytes, its frame claims {claimed}"
        got = chunk_hash(data)
        if got != h:
            return None, f"content hashes to {got}"
        return data, None

    def _forget_missing(self, h: str) -> bool:
        """Drop h's row if its file is (still) gone; False if the file has reappeared meanwhile."""
        with self._write():
            if self.blob_path(h).exists():
                return False
            self._touches.pop(h, None)
            self._conn.execute("DELETE FROM chunks WHERE hash = ?", (h,))
        log.warning("%s: chunk %s was indexed but its blob file is gone; index entry dropped", self.root, h)
        return True

    def _quarantine_blob(self, h: str | None, path: Path, st: os.stat_result, problem: str) -> Path | None:
        """Move a bad blob to quarantine/ and drop its row; None if the file changed since it was read."""
        stamp = f"{int(self._clock() * 1000)}-{secrets.token_hex(3)}"
        qpath = self._quarantine / f"{path.stem}.{stamp}.zst"
        with self._write():
            try:
                now_st = os.stat(path)
            except FileNotFoundError:
                now_st = None
            if now_st is not None:
                if (now_st.st_ino, now_st.st_size, now_st.st_mtime_ns) != (
                    st.st_ino,
                    st.st_size,
                    st.st_mtime_ns,
                ):
                    return None
                os.replace(path, qpath)
            if h is not None:
                self._touches.pop(h, None)
                self._conn.execute("DELETE FROM chunks WHERE hash = ?", (h,))
        log.warning("%s: corrupt blob %s (%s) moved to %s", self.root, path.name, problem, qpath)
        self._trim_quarantine()
        return qpath

    def _trim_quarantine(self) -> None:
        try:
            files = sorted(
                (e for e in os.scandir(self._quarantine) if e.is_file(follow_symlinks=False)),
                key=lambda e: (e.stat().st_mtime_ns, e.name),
            )
        except OSError:
            return
        for e in files[: max(0, len(files) - QUARANTINE_FILES_MAX)]:
            Path(e.path).unlink(missing_ok=True)

    def has(self, h: str) -> bool:
        """True if the index holds chunk `h`."""
        _check_hash(h)
        return self._conn.execute("SELECT 1 FROM chunks WHERE hash = ?", (h,)).fetchone() is not None

    def missing(self, hashes: Iterable[str]) -> list[str]:
        """The hashes not held, in the order given, each once."""
        wanted = list(dict.fromkeys(_check_hash(h) for h in hashes))
        held: set[str] = set()
        for i in range(0, len(wanted), SQL_IN_MAX):
            part = wanted[i : i + SQL_IN_MAX]
            marks = ",".join("?" * len(part))
            held.update(
                r[0] for r in self._conn.execute(f"SELECT hash FROM chunks WHERE hash IN ({marks})", part)
            )
        return [h for h in wanted if h not in held]

    def iter_hashes(self) -> Iterator[str]:
        """Every held chunk's hash, in hash order (read in pages, so the store may change meanwhile)."""
        after = ""
        while True:
            page = self._conn.execute(
                "SELECT hash FROM chunks WHERE hash > ? ORDER BY hash LIMIT ?", (after, EVICT_BATCH_CHUNKS)
            ).fetchall()
            if not page:
                return
            yield from (r[0] for r in page)
            after = page[-1][0]

    def chunk_size(self, h: str) -> int | None:
        """The raw (uncompressed) size of chunk `h`, or None if not held."""
        _check_hash(h)
        row = self._conn.execute("SELECT raw_bytes FROM chunks WHERE hash = ?", (h,)).fetchone()
        return None if row is None else row[0]

    # ---------------------------------------------------------------- scenes and pins

    def add_scene(
        self,
        scene_id: str,
        chunk_hashes: Sequence[str],
        *,
        total_bytes: int,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Record a scene: its id is its manifest's chunk hash, `chunk_hashes` the chunks it lists.

        The manifest chunk itself (`scene_id`) counts as a member: holding the scene whole needs it,
        and pins and gc keep it. Membership may name chunks not held yet (a scene being fetched).
        Adding it again touches it and, if `meta` is given, replaces the meta.
        """
        _check_hash(scene_id, "scene id")
        if not isinstance(total_bytes, int) or total_bytes < 0:
            raise ValueError(f"total_bytes must be an int >= 0, not {total_bytes!r}")
        members = list(dict.fromkeys([scene_id, *(_check_hash(h) for h in chunk_hashes)]))
        if len(members) > SCENE_CHUNKS_MAX:
            raise StoreError(f"scene {scene_id}: {len(members)} chunks is over the {SCENE_CHUNKS_MAX} limit")
        meta_text = None
        if meta is not None:
            if not isinstance(meta, dict):
                raise ValueError(f"scene meta must be a dict, not {type(meta).__name__}")
            meta_text = json.dumps(meta, sort_keys=True, ensure_ascii=False)
            if len(meta_text.encode()) > META_BYTES_MAX:
                raise StoreError(f"scene {scene_id}: meta is over the {META_BYTES_MAX}-byte limit")
        with self._write():
            db = self._conn
            now = self._clock()
            db.execute(
                """INSERT INTO scenes (scene_id, total_bytes, added_s, access_s, meta) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (scene_id) DO UPDATE SET total_bytes = excluded.total_bytes,
                       access_s = excluded.access_s, meta = coalesce(?, scenes.meta)""",
                (scene_id, total_bytes, now, now, meta_text or "{}", meta_text),
            )
            db.executemany(
                "INSERT OR IGNORE INTO scene_chunks (scene_id, hash) VALUES (?, ?)",
                ((scene_id, h) for h in members),
            )

    def remove_scene(self, scene_id: str) -> bool:
        """Forget a scene's record and membership (its chunks stay until gc); refuses a pinned scene."""
        _check_hash(scene_id, "scene id")
        with self._write():
            db = self._conn
            reasons = [r[0] for r in db.execute("SELECT reason FROM pins WHERE scene_id = ?", (scene_id,))]
            if reasons:
                raise StoreError(f"scene {scene_id} is pinned ({', '.join(sorted(reasons))}); unpin it first")
            db.execute("DELETE FROM scene_chunks WHERE scene_id = ?", (scene_id,))
            return db.execute("DELETE FROM scenes WHERE scene_id = ?", (scene_id,)).rowcount > 0

    def scene_ids(self) -> list[str]:
        """Every recorded scene, oldest added first."""
        return [r[0] for r in self._conn.execute("SELECT scene_id FROM scenes ORDER BY added_s, scene_id")]

    def scene_info(self, scene_id: str) -> dict[str, Any] | None:
        """A scene's record: total_bytes, meta, times, member counts, `complete`, `pins`; None if unknown."""
        _check_hash(scene_id, "scene id")
        db = self._conn
        row = db.execute(
            "SELECT total_bytes, added_s, access_s, meta FROM scenes WHERE scene_id = ?", (scene_id,)
        ).fetchone()
        if row is None:
            return None
        total_bytes, added_s, access_s, meta = row
        members, present = db.execute(
            """SELECT count(*), count(c.hash) FROM scene_chunks sc LEFT JOIN chunks c ON c.hash = sc.hash
               WHERE sc.scene_id = ?""",
            (scene_id,),
        ).fetchone()
        pins = {
            r[0]: r[1] for r in db.execute("SELECT reason, since_s FROM pins WHERE scene_id = ?", (scene_id,))
        }
        return {
            "scene_id": scene_id,
            "total_bytes": total_bytes,
            "meta": json.loads(meta),
            "added_s": added_s,
            "access_s": access_s,
            "chunks": members,
            "chunks_present": present,
            "complete": members == present,
            "pins": sorted(pins),
            "pinned_since_s": pins,
        }

    def scene_chunks(self, scene_id: str) -> list[str]:
        """A scene's member chunk hashes (the manifest's own included), sorted."""
        _check_hash(scene_id, "scene id")
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT hash FROM scene_chunks WHERE scene_id = ? ORDER BY hash", (scene_id,)
            )
        ]

    def has_scene(self, scene_id: str) -> bool:
        """True if the scene is recorded and every member chunk is held ("holds it whole")."""
        _check_hash(scene_id, "scene id")
        row = self._conn.execute(
            f"SELECT {_SCENE_COMPLETE} FROM scenes s WHERE s.scene_id = ?", (scene_id,)
        ).fetchone()
        return bool(row and row[0])

    def pin(self, scene_id: str, reason: str) -> None:
        """Keep every chunk of a recorded scene from eviction until unpinned for this reason."""
        _check_hash(scene_id, "scene id")
        if not isinstance(reason, str) or not reason or len(reason) > REASON_CHARS_MAX:
            raise ValueError(
                f"pin reason must be a non-empty string of at most {REASON_CHARS_MAX} characters"
            )
        with self._write():
            db = self._conn
            if db.execute("SELECT 1 FROM scenes WHERE scene_id = ?", (scene_id,)).fetchone() is None:
                raise StoreError(f"cannot pin scene {scene_id}: not recorded in this store (add_scene first)")
            (count,) = db.execute("SELECT count(*) FROM pins WHERE scene_id = ?", (scene_id,)).fetchone()
            if count >= PINS_PER_SCENE_MAX:
                raise StoreError(f"scene {scene_id} already has {count} pins, the limit")
            db.execute(
                "INSERT OR IGNORE INTO pins (scene_id, reason, since_s) VALUES (?, ?, ?)",
                (scene_id, reason, self._clock()),
            )

    def unpin(self, scene_id: str, reason: str) -> None:
        """Drop one pin (no error if it was not there)."""
        _check_hash(scene_id, "scene id")
        with self._write():
            self._conn.execute("DELETE FROM pins WHERE scene_id = ? AND reason = ?", (scene_id, reason))

    def keep(self, reason: str, hashes: Iterable[str]) -> None:
        """Keep these chunks (held or not yet) from eviction and gc until `release(reason)`: for
        chunks no scene lists, such as a job's unit results ("job:<id>")."""
        if not isinstance(reason, str) or not reason or len(reason) > REASON_CHARS_MAX:
            raise ValueError(f"keep reason must be a non-empty string of at most {REASON_CHARS_MAX} chars")
        rows = [(reason, _check_hash(h)) for h in hashes]
        with self._write():
            self._conn.executemany("INSERT OR IGNORE INTO kept_chunks (reason, hash) VALUES (?, ?)", rows)

    def release(self, reason: str, hashes: Iterable[str] | None = None) -> None:
        """Stop keeping the chunks kept for `reason` (only `hashes` of them, when given)."""
        with self._write():
            if hashes is None:
                self._conn.execute("DELETE FROM kept_chunks WHERE reason = ?", (reason,))
            else:
                self._conn.executemany(
                    "DELETE FROM kept_chunks WHERE reason = ? AND hash = ?", [(reason, h) for h in hashes]
                )

    # ---------------------------------------------------------------- eviction and upkeep

    def enforce_quota(self) -> int:
        """Evict least-recently-used unpinned chunks until stored bytes <= quota; returns bytes freed."""
        return self._enforce_quota(protect=frozenset())

    def _enforce_quota(self, protect: set[str] | frozenset[str]) -> int:
        """Eviction, sparing `protect` (what the calling put just stored: a put never evicts its own)."""
        if self.quota_bytes is None:
            return 0
        freed = 0
        while True:
            with self._write():
                db = self._conn
                (stored,) = db.execute("SELECT stored_bytes FROM totals").fetchone()
                excess = stored - self.quota_bytes
                victims: list[tuple[str, int]] = []
                if excess > 0:
                    cursor = db.execute(
                        f"""SELECT c.hash, c.stored_bytes FROM chunks c WHERE NOT {_PINNED}
                            ORDER BY c.access_s, c.hash"""
                    )
                    for h, size in cursor:
                        if h in protect:
                            continue
                        victims.append((h, size))
                        excess -= size
                        if excess <= 0 or len(victims) >= EVICT_BATCH_CHUNKS:
                            break
                    cursor.close()
                    self._delete_chunks(victims)
            freed += sum(size for _, size in victims)
            if len(victims) < EVICT_BATCH_CHUNKS:
                break
        if freed:
            log.info(
                "%s: evicted %d bytes to stay under the %d-byte quota", self.root, freed, self.quota_bytes
            )
        return freed

    def _delete_chunks(self, victims: list[tuple[str, int]]) -> None:
        """Inside a write transaction: unlink blobs and drop rows (a crash between leaves rows without
        files, which reads drop; the other order could unlink a blob another process just re-stored)."""
        for h, _ in victims:
            self.blob_path(h).unlink(missing_ok=True)
        self._conn.executemany("DELETE FROM chunks WHERE hash = ?", [(h,) for h, _ in victims])

    def gc(self, *, grace_s: float = GC_GRACE_S) -> dict[str, int]:
        """Remove chunks no scene lists (unless used within `grace_s`), clean tmp/, enforce the quota."""
        tmp_removed = self._clean_tmp()
        removed = freed = 0
        while True:
            with self._write():
                cutoff = self._clock() - grace_s
                victims = self._conn.execute(
                    """SELECT c.hash, c.stored_bytes FROM chunks c
                       WHERE c.access_s <= ?
                         AND NOT EXISTS (SELECT 1 FROM scene_chunks sc WHERE sc.hash = c.hash)
                         AND NOT EXISTS (SELECT 1 FROM kept_chunks k WHERE k.hash = c.hash)
                       LIMIT ?""",
                    (cutoff, EVICT_BATCH_CHUNKS),
                ).fetchall()
                self._delete_chunks(victims)
            removed += len(victims)
            freed += sum(size for _, size in victims)
            if len(victims) < EVICT_BATCH_CHUNKS:
                break
        quota_freed = self.enforce_quota()
        self._trim_quarantine()
        return {
            "unreferenced_chunks_removed": removed,
            "unreferenced_bytes_freed": freed,
            "quota_bytes_freed": quota_freed,
            "bytes_freed": freed + quota_freed,
            "tmp_files_removed": tmp_removed,
        }

    def verify(self) -> dict[str, Any]:
        """Re-read and re-hash every blob; quarantine bad ones, drop rows without files, adopt orphans.

        `checked` counts indexed chunks and orphan files examined, `ok` those found good (recovered
        orphans included). Lists hold at most `REPORT_HASHES_MAX` hashes; the `*_total` keys count all.
        """
        db = self._conn
        checked = ok = recovered = orphans_bad = 0
        corrupt: list[str] = []
        missing: list[str] = []
        totals = {"corrupt_total": 0, "missing_total": 0}

        def note(kind: str, h: str) -> None:
            totals[f"{kind}_total"] += 1
            lst = corrupt if kind == "corrupt" else missing
            if len(lst) < REPORT_HASHES_MAX:
                lst.append(h)

        after = ""
        while True:  # keyset pages over the index, so rows may change between pages
            page = db.execute(
                "SELECT hash, raw_bytes, stored_bytes FROM chunks WHERE hash > ? ORDER BY hash LIMIT ?",
                (after, EVICT_BATCH_CHUNKS),
            ).fetchall()
            if not page:
                break
            after = page[-1][0]
            for h, raw, stored in page:
                checked += 1
                path = self.blob_path(h)
                try:
                    blob, st = self._read_blob(path, stored)
                except FileNotFoundError:
                    if self._forget_missing(h):
                        note("missing", h)
                    else:
                        ok += 1
                    continue
                _, problem = self._decode(h, blob, raw)
                if problem is None:
                    ok += 1
                elif self._quarantine_blob(h, path, st, problem) is not None:
                    note("corrupt", h)
                else:
                    ok += 1  # replaced by a fresh write while we read; that write was hashed on the way in

        for path in self._blob_files():
            name = path.name
            h = name[: -len(".zst")] if name.endswith(".zst") else ""
            if is_chunk_hash(h) and path.parent == self.blob_path(h).parent:
                if db.execute("SELECT 1 FROM chunks WHERE hash = ?", (h,)).fetchone() is not None:
                    continue
                checked += 1
                try:
                    blob, st = self._read_blob(path, None)
                except FileNotFoundError:
                    continue
                data, problem = self._decode(h, blob, None)
                if problem is None and data is not None and self._adopt(h, len(data), st.st_size):
                    recovered += 1
                    ok += 1
                    continue
                if problem is None:
                    continue
            else:
                problem = "unexpected file in the blob tree"
                st = path.stat()
            if self._quarantine_blob(None, path, st, problem) is not None:
                orphans_bad += 1
        return {
            "checked": checked,
            "ok": ok,
            "corrupt": corrupt,
            "missing": missing,
            **totals,
            "orphans_recovered": recovered,
            "orphans_quarantined": orphans_bad,
        }

    def _adopt(self, h: str, raw: int, stored: int) -> bool:
        """Index an orphan blob (good, but its row was never committed)."""
        with self._write():
            now = self._clock()
            cur = self._conn.execute(
                """INSERT OR IGNORE INTO chunks (hash, raw_bytes, stored_bytes, added_s, access_s)
                   VALUES (?, ?, ?, ?, ?)""",
                (h, raw, stored, now, now),
            )
        if cur.rowcount:
            log.info("%s: re-indexed orphan blob %s (a write interrupted before its commit)", self.root, h)
        return cur.rowcount > 0

    def _blob_files(self) -> Iterator[Path]:
        """Every file in the blob tree (two shard levels; deeper or odd entries are yielded too)."""
        stack = [self._blobs]
        while stack:
            d = stack.pop()
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    yield Path(e.path)

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: chunks, raw/stored bytes, scenes (complete, pinned), quota, quarantined files."""
        db = self._conn
        chunks, raw, stored = db.execute("SELECT chunks, raw_bytes, stored_bytes FROM totals").fetchone()
        (scenes,) = db.execute("SELECT count(*) FROM scenes").fetchone()
        (complete,) = db.execute(f"SELECT count(*) FROM scenes s WHERE {_SCENE_COMPLETE}").fetchone()
        (pinned,) = db.execute("SELECT count(DISTINCT scene_id) FROM pins").fetchone()
        try:
            quarantined = sum(1 for e in os.scandir(self._quarantine) if e.is_file(follow_symlinks=False))
        except FileNotFoundError:
            quarantined = 0
        return {
            "root": str(self.root),
            "chunks": chunks,
            "raw_bytes": raw,
            "stored_bytes": stored,
            "scenes": scenes,
            "complete_scenes": complete,
            "pinned_scenes": pinned,
            "quota_bytes": self.quota_bytes,
            "quarantined_files": quarantined,
        }


def _remove_tree(path: Path) -> int:
    """Remove a folder (or file) and everything in it; returns the files removed."""
    if not path.exists():
        return 0
    if not path.is_dir():
        path.unlink(missing_ok=True)
        return 1
    count = sum(len(files) for _, _, files in os.walk(path))
    shutil.rmtree(path, ignore_errors=True)
    return count


def _split_sql(script: str) -> Iterator[str]:
    """The statements of a schema script (triggers keep their inner `;` until `END;`)."""
    buf: list[str] = []
    for line in script.splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            yield text
            buf = []
    if "\n".join(buf).strip():
        raise AssertionError("schema script ends mid-statement")
