"""Every peer's persistent job queue: one SQLite file, `$MESHRENDER_HOME/jobs.sqlite`.

A job is what to render (scene id, settings, frame range, backend class) and its id is the BLAKE3
hash of that content's msgpack encoding, so submitting the same render twice finds the first job.
A failed or cancelled job submitted again is queued again and keeps the unit results it has.

States move only as `_TRANSITIONS` allows:

    queued -> running -> done
      |          |
      +----------+----> failed | cancelled  -> queued (submitted again)

`running -> running` is a coordinator resuming after a crash: it keeps `started_s`. Anything else
raises `JobError` naming the job's state. The queue runs highest priority first, then oldest
submission (`seq`, a counter that a resubmission takes anew: ties never depend on the clock).

Each accepted unit result is one row (job, every `WorkUnit` field) naming the chunk that holds it in
the chunk store; a second result for the same unit is ignored, so a retry records nothing twice.
Triggers keep `jobs.units_done` equal to the job's row count, so listing jobs reads no result rows.

Durability: WAL with `synchronous = FULL`, so a commit is on disk when the call returns. A result
row lost to a power cut would only cost a re-render, but a lost `cancel`, `finish` or `submit` is a
queue the user no longer recognises; FULL costs one WAL fsync per commit. The coordinator records
accepted units in batches (`record_results`) from a thread of its own, so that fsync is never
between a worker and its next unit.

Concurrency: one `JobDB` per thread (the connection refuses other threads); any number of them, in
any processes (the running peer and CLI commands), may open one file. Every change is one
`BEGIN IMMEDIATE` transaction that reads, checks and writes, so they serialise on SQLite's write
lock (waiting up to `BUSY_TIMEOUT_S`) and a check never acts on a state another process has just
changed. Reads see the last commit and never wait for writers (WAL).

Opening: a missing file is made whole before anyone can see it (`meshrender.dbfile`); an empty,
truncated or foreign file is refused as damaged, with its size and what to do, never taken for an
empty queue; a database another process keeps locked is reported as busy, never as damaged.

Nothing here reads the clock: every time stored is a `now` (wall-clock seconds) from the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Literal

import blake3
import msgspec
from msgspec import Meta

from . import dbfile
from .errors import MeshrenderError
from .settings import RenderSettings
from .units import FRAME_MAX, WorkUnit

log = logging.getLogger(__name__)

JOB_BACKENDS = ("any", "cpu", "gpu")  # results are bit-identical only within one backend class
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATES: tuple[JobState, ...] = ("done", "failed", "cancelled")

FRAMES_PER_JOB_MAX = 100_000  # over an hour of animation at 24 fps; longer renders are several jobs
UNITS_PER_JOB_MAX = 1 << 26  # result rows of one job (~100 bytes each, ~6 GiB); a bigger job is split
QUEUE_JOBS_MAX = 10_000  # queued + running jobs on one peer; more is a runaway script, not a queue
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000  # room around the default 0 for "urgent" and "whenever"
ERROR_CHARS_MAX = 4000  # a failure message with some context; a whole traceback belongs in the log
LABEL_CHARS_MAX = 256  # a submitter, peer id or backend label (the wire caps these at 256 too)
OUTPUTS_MAX = 4 * FRAMES_PER_JOB_MAX  # files a finished job lists: EXR + PNG per frame, job.json
PATH_CHARS_MAX = 4096  # one output path (Linux PATH_MAX)
BACKEND_CHARS_MAX = 16  # a JobSpec backend class name off the wire, before validate_spec names it
ID_PREFIX_MIN = 4  # hex digits a user must type to name a job; an ambiguous prefix asks for more
ID_HEX_LEN = 64  # BLAKE3's 32-byte digest in hex
ID_SHOWN_CHARS = 12  # id digits in messages: enough to paste back as a prefix
BUSY_TIMEOUT_S = 10.0  # another process holds the write lock for one short transaction, far less
SCHEMA_VERSION = 2  # 1: step 4's layout, without units_done (opened and upgraded in place)

_HEX_RE = re.compile(r"[0-9a-f]+")
_HASH_RE = re.compile(r"[0-9a-f]{64}")

# (verb for messages, states it needs, state it leaves; None keeps the state)
_TRANSITIONS: dict[str, tuple[str, tuple[JobState, ...], JobState | None]] = {
    "start": ("start", ("queued", "running"), "running"),
    "finish": ("finish", ("running",), "done"),
    "fail": ("fail", ("queued", "running"), "failed"),
    "cancel": ("cancel", ("queued", "running"), "cancelled"),
    "requeue": ("queue again", ("failed", "cancelled"), "queued"),
    "set_priority": ("change the priority of", ("queued", "running"), None),
}

# Column order is the on-disk layout of version 1 with units_done appended (ALTER TABLE adds it last).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id          TEXT PRIMARY KEY,
        spec        BLOB NOT NULL,
        priority    INTEGER NOT NULL,
        state       TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        submitted_s REAL NOT NULL,
        started_s   REAL,
        finished_s  REAL,
        error       TEXT,
        units_total INTEGER NOT NULL DEFAULT 0,
        submitter   TEXT NOT NULL DEFAULT '',
        outputs     TEXT NOT NULL DEFAULT '[]',
        units_done  INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority, seq)",
    """CREATE TABLE IF NOT EXISTS results (
        job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        frame   INTEGER NOT NULL,
        pass    INTEGER NOT NULL,
        y0      INTEGER NOT NULL,
        x0      INTEGER NOT NULL,
        width   INTEGER NOT NULL,
        height  INTEGER NOT NULL,
        passes  INTEGER NOT NULL,
        chunk   TEXT NOT NULL,
        peer    TEXT NOT NULL,
        backend TEXT NOT NULL,
        seconds REAL NOT NULL,
        at_s    REAL NOT NULL,
        PRIMARY KEY (job_id, frame, pass, y0, x0, width, height, passes)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS results_insert AFTER INSERT ON results BEGIN
        UPDATE jobs SET units_done = units_done + 1 WHERE id = NEW.job_id;
    END""",
    """CREATE TRIGGER IF NOT EXISTS results_delete AFTER DELETE ON results BEGIN
        UPDATE jobs SET units_done = units_done - 1 WHERE id = OLD.job_id;
    END""",
)


class JobError(MeshrenderError):
    """A job that cannot be named, queued or changed as asked: an unknown or ambiguous id, a bad
    spec, a state change its state does not allow, or a job database that cannot be used."""


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to render. Its msgpack encoding is hashed into the job id: never reorder or rename
    fields, and know that a new field (here or in RenderSettings) changes every id."""

    scene_id: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    settings: RenderSettings
    first_frame: Annotated[int, Meta(ge=0, le=FRAME_MAX)] = 0  # inclusive
    last_frame: Annotated[int, Meta(ge=0, le=FRAME_MAX)] = 0  # inclusive
    backend: Annotated[str, Meta(max_length=BACKEND_CHARS_MAX)] = "any"  # one of JOB_BACKENDS


_spec_encoder = msgspec.msgpack.Encoder()
_spec_decoder = msgspec.msgpack.Decoder(JobSpec)
_outputs_decoder = msgspec.json.Decoder(list[str])


def spec_bytes(spec: JobSpec) -> bytes:
    """The spec's msgpack encoding, as stored and hashed. A field added later is left out while it
    holds its default (settings.denoise), so every older job keeps its encoding and its id."""
    data = msgspec.to_builtins(spec)
    if not spec.settings.denoise:
        del data["settings"]["denoise"]
    return _spec_encoder.encode(data)


def job_id(spec: JobSpec) -> str:
    """The job's id: BLAKE3 of the spec's msgpack encoding (spec_bytes), 64 lowercase hex digits."""
    return blake3.blake3(spec_bytes(spec)).hexdigest()


def validate_spec(spec: JobSpec) -> None:
    """Raise JobError naming what is wrong with a spec (a constructor does not check bounds)."""
    if not isinstance(spec, JobSpec):
        raise JobError(f"not a job spec: {type(spec).__name__}")
    try:  # every bound declared on the struct and its settings, as a spec off the wire is checked
        _spec_decoder.decode(_spec_encoder.encode(spec))
    except msgspec.ValidationError as exc:
        raise JobError(f"job spec: {exc}") from None
    frames = spec.last_frame - spec.first_frame + 1
    if frames < 1:
        raise JobError(f"frames {spec.first_frame}..{spec.last_frame}: the last frame comes before the first")
    if frames > FRAMES_PER_JOB_MAX:
        raise JobError(
            f"frames {spec.first_frame}..{spec.last_frame} are {frames} frames; one job holds at most "
            f"{FRAMES_PER_JOB_MAX} (split the range into several jobs)"
        )
    if spec.backend not in JOB_BACKENDS:
        raise JobError(f"backend {spec.backend!r}: expected one of {', '.join(JOB_BACKENDS)}")


@dataclasses.dataclass(frozen=True)
class JobRecord:
    id: str
    spec: JobSpec
    priority: int
    state: JobState
    submitted_s: float
    started_s: float | None
    finished_s: float | None
    error: str | None
    units_total: int
    units_done: int
    submitter: str
    outputs: list[str]
    seq: int


@dataclasses.dataclass(frozen=True)
class UnitRecord:
    """One accepted unit result: the chunk (64 hex hash) holding it, who rendered it, on what, when."""

    unit: WorkUnit
    chunk: str
    peer: str
    backend: str
    seconds: float
    at_s: float


_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))  # each one a column of `jobs`
_COLS = ", ".join(_FIELDS)
# running, then queued in run order, then finished jobs newest first
_LIST_ORDER = """CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END,
                 CASE WHEN state IN ('running', 'queued') THEN -priority END,
                 CASE WHEN state IN ('running', 'queued') THEN seq END,
                 finished_s DESC, seq DESC"""
_RUN_ORDER = "priority DESC, seq"
_UNIT_COLS = "frame, pass, y0, x0, width, height, passes"
_UNIT_ORDER = "frame, pass, y0, x0, width, height, passes"  # canonical: how the film adds them up


class JobDB:
    """The job queue in one SQLite file (see the module docstring). Methods that name a job take
    its id or a unique prefix of at least `ID_PREFIX_MIN` hex digits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(f"{self.path}: cannot create the job database's folder: {exc}") from exc
        problem = dbfile.damage(self.path)  # before SQLite would take an empty file for an empty queue
        if problem is not None:
            raise JobError(self._damaged(problem))
        try:
            dbfile.create(self.path)  # a missing file is made whole, never seen half-made
            db = dbfile.connect(self.path, timeout_s=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise JobError(f"{self.path}: cannot open the job database: {exc}") from exc
        try:
            self._open(db)
        except sqlite3.Error as exc:
            db.close()
            raise JobError(self._sql_problem(exc, "open")) from exc
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db

    def _damaged(self, problem: str) -> str:
        size = dbfile.size_of(self.path)
        held = f"{size:,} bytes" if size is not None else "size unknown"
        return (
            f"{self.path}: the job database is damaged ({held}): {problem}. Nothing was changed. Keep a "
            "copy of it, then move it aside: the next start begins an empty queue (images already in "
            "results/ stay, the queue's records of them do not)"
        )

    def _sql_problem(self, exc: sqlite3.Error, doing: str) -> str:
        """The message for an sqlite3 error while `doing` (open, read, update): whose problem it is."""
        match dbfile.kind(exc):
            case "busy":
                return (
                    f"{self.path}: the job database is in use by another process, which held its lock "
                    f"for over {BUSY_TIMEOUT_S:g} s ({exc}); nothing is wrong with the file: try again"
                )
            case "damaged":
                return self._damaged(f'SQLite says "{exc}"')
        return f"{self.path}: cannot {doing} the job database: {exc}"  # disk full, I/O error, permissions

    def _open(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._refuse_newer(db)  # before WAL mode rewrites the header of a file we must not touch
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # e.g. a network file system without shared memory
            log.warning(
                "%s: SQLite refused WAL mode (using %s); readers will wait on writers", self.path, mode
            )
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = self._refuse_newer(db)  # again, holding the lock: another process may have upgraded
            if version == 1:
                db.execute("ALTER TABLE jobs ADD COLUMN units_done INTEGER NOT NULL DEFAULT 0")
            for statement in _SCHEMA:
                db.execute(statement)
            if version == 1:
                db.execute("UPDATE jobs SET units_done = (SELECT count(*) FROM results WHERE job_id = id)")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _refuse_newer(self, db: sqlite3.Connection) -> int:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JobError(
                f"{self.path}: job database schema version {version} is newer than this meshrender's "
                f"({SCHEMA_VERSION}); upgrade meshrender to open it"
            )
        return version

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> JobDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise JobError(f"{self.path}: the job database was closed")
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's lock across processes; rolled back on any error."""
        db = self._conn
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise JobError(self._sql_problem(exc, "take the write lock of")) from exc
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):  # disk full, I/O error, lock lost, damage found
                raise JobError(self._sql_problem(exc, "update")) from exc
            raise

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JobError(self._sql_problem(exc, "read")) from exc

    # ------------------------------------------------------------------ naming jobs

    def _find(self, db: sqlite3.Connection, job_id_or_prefix: str) -> tuple:
        """The job row named by a full id or a unique prefix; JobError saying why not otherwise."""
        text = str(job_id_or_prefix).strip().lower()
        if not _HEX_RE.fullmatch(text) or not ID_PREFIX_MIN <= len(text) <= ID_HEX_LEN:
            raise JobError(
                f"job id {job_id_or_prefix!r}: give the job's id or at least {ID_PREFIX_MIN} of its "
                "first hex digits"
            )
        # every id starting with `text` sorts in [text, text + "g"): "g" follows every hex digit
        rows = db.execute(
            f"SELECT {_COLS} FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT 3", (text, text + "g")
        ).fetchall()
        if not rows:
            raise JobError(f"no job {text} in {self.path}")
        if len(rows) > 1:
            some = ", ".join(r[0][:ID_SHOWN_CHARS] for r in rows[:2])
            raise JobError(f"job id {text} is ambiguous: it starts {some}, ...; give more digits")
        return rows[0]

    def _record(self, row: tuple) -> JobRecord:
        fields = dict(zip(_FIELDS, row, strict=True))
        jid = fields["id"]
        if blake3.blake3(fields["spec"]).hexdigest() != jid:  # the id is the content: check every read
            raise JobError(f"{self.path}: job {jid[:ID_SHOWN_CHARS]}'s stored spec does not match its id")
        try:
            fields["spec"] = _spec_decoder.decode(fields["spec"])
            fields["outputs"] = _outputs_decoder.decode(fields["outputs"])
        except msgspec.DecodeError as exc:
            raise JobError(f"{self.path}: job {jid[:ID_SHOWN_CHARS]} cannot be read: {exc}") from exc
        return JobRecord(**fields)

    def _transition(self, db: sqlite3.Connection, job_id_or_prefix: str, change: str) -> str:
        """Inside a write transaction: the job's id, if its state allows `change` (JobError if not)."""
        row = self._find(db, job_id_or_prefix)
        jid, state = row[0], row[3]
        verb, allowed, _ = _TRANSITIONS[change]
        if state not in allowed:
            if state in FINISHED_STATES:
                raise JobError(f"cannot {verb} job {jid[:ID_SHOWN_CHARS]}: it already finished ({state})")
            raise JobError(
                f"cannot {verb} job {jid[:ID_SHOWN_CHARS]}: it is {state}, and that needs it "
                f"{' or '.join(allowed)}"
            )
        return jid

    def _set_state(
        self, db: sqlite3.Connection, jid: str, change: str, assignments: str, args: tuple
    ) -> None:
        target = _TRANSITIONS[change][2]
        sets = ("state = ?, " if target else "") + assignments
        db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", ((target,) if target else ()) + args + (jid,))

    # ------------------------------------------------------------------ the queue

    def submit(
        self, spec: JobSpec, *, priority: int = 0, now: float, submitter: str = ""
    ) -> tuple[JobRecord, bool]:
        """Queue `spec`; returns its record and whether it was queued by this call. The same content
        again returns the existing job untouched, unless it failed or was cancelled: then it is
        queued again behind its priority's queue, with `priority`, no error and its results kept."""
        validate_spec(spec)
        _check_priority(priority)
        jid = job_id(spec)
        who = _clip(str(submitter), LABEL_CHARS_MAX)
        with self._write() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (jid,)).fetchone()
            if row is not None and row[0] not in _TRANSITIONS["requeue"][1]:
                return self._record(self._find(db, jid)), False
            (active,) = db.execute(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchone()
            if active >= QUEUE_JOBS_MAX:
                raise JobError(
                    f"{self.path}: {active} jobs are queued or running, the most one peer keeps; "
                    "cancel some or wait for them to finish"
                )
            (seq,) = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM jobs").fetchone()
            if row is None:
                db.execute(
                    """INSERT INTO jobs (id, spec, priority, state, seq, submitted_s, submitter)
                       VALUES (?, ?, ?, 'queued', ?, ?, ?)""",
                    (jid, spec_bytes(spec), priority, seq, float(now), who),
                )
            else:
                self._set_state(
                    db,
                    jid,
                    "requeue",
                    "priority = ?, seq = ?, submitted_s = ?, submitter = ?, started_s = NULL, "
                    "finished_s = NULL, error = NULL, outputs = '[]'",
                    (priority, seq, float(now), who),
                )
            return self._record(self._find(db, jid)), True

    def get(self, job_id_or_prefix: str) -> JobRecord:
        """The job with this id or unique id prefix (at least `ID_PREFIX_MIN` hex digits)."""
        try:
            return self._record(self._find(self._conn, job_id_or_prefix))
        except sqlite3.Error as exc:
            raise JobError(self._sql_problem(exc, "read")) from exc

    def list(self, states: Iterable[str] | None = None) -> list[JobRecord]:
        """Jobs (only those in `states`, if given): running first, then queued in run order, then
        finished ones newest first."""
        where, args = "", ()
        if states is not None:
            args = tuple(dict.fromkeys(states))
            unknown = [s for s in args if s not in JOB_STATES]
            if unknown:
                raise JobError(f"job state {unknown[0]!r}: expected one of {', '.join(JOB_STATES)}")
            where = f"WHERE state IN ({', '.join('?' * len(args))})" if args else "WHERE 0"
        return [
            self._record(r)
            for r in self._read(f"SELECT {_COLS} FROM jobs {where} ORDER BY {_LIST_ORDER}", args)
        ]

    def next_queued(self) -> JobRecord | None:
        """The job that runs next: the highest priority, then the oldest submission."""
        rows = self._read(f"SELECT {_COLS} FROM jobs WHERE state = 'queued' ORDER BY {_RUN_ORDER} LIMIT 1")
        return self._record(rows[0]) if rows else None

    def running(self) -> list[JobRecord]:
        """Jobs left running, in run order: after a crash, the ones this peer resumes."""
        return [
            self._record(r)
            for r in self._read(f"SELECT {_COLS} FROM jobs WHERE state = 'running' ORDER BY {_RUN_ORDER}")
        ]

    def set_priority(self, job_id: str, priority: int) -> None:
        """Move a queued or running job within the queue."""
        _check_priority(priority)
        with self._write() as db:
            jid = self._transition(db, job_id, "set_priority")
            self._set_state(db, jid, "set_priority", "priority = ?", (priority,))

    def start(self, job_id: str, *, now: float, units_total: int) -> None:
        """queued -> running, or running -> running when a coordinator resumes (keeps `started_s`)."""
        if type(units_total) is not int or not 0 <= units_total <= UNITS_PER_JOB_MAX:
            raise JobError(f"units_total {units_total!r}: a whole number from 0 to {UNITS_PER_JOB_MAX}")
        with self._write() as db:
            jid = self._transition(db, job_id, "start")
            keep_or_now = "CASE WHEN state = 'running' THEN started_s ELSE ? END"  # a resume keeps it
            self._set_state(
                db, jid, "start", f"started_s = {keep_or_now}, units_total = ?", (float(now), units_total)
            )

    def finish(self, job_id: str, *, now: float, outputs: list[str]) -> None:
        """running -> done, listing the files written."""
        outputs = list(outputs)
        if len(outputs) > OUTPUTS_MAX:
            raise JobError(f"{len(outputs)} outputs for one job; at most {OUTPUTS_MAX}")
        for p in outputs:
            if not isinstance(p, str) or len(p) > PATH_CHARS_MAX:
                raise JobError(f"output {p!r:.80}: not a path of at most {PATH_CHARS_MAX} characters")
        with self._write() as db:
            jid = self._transition(db, job_id, "finish")
            self._set_state(
                db,
                jid,
                "finish",
                "finished_s = ?, outputs = ?",
                (float(now), msgspec.json.encode(outputs).decode()),
            )

    def fail(self, job_id: str, *, now: float, error: str) -> None:
        """queued/running -> failed, keeping the reason (clipped to `ERROR_CHARS_MAX`)."""
        with self._write() as db:
            jid = self._transition(db, job_id, "fail")
            self._set_state(
                db, jid, "fail", "finished_s = ?, error = ?", (float(now), _clip(str(error), ERROR_CHARS_MAX))
            )

    def cancel(self, job_id: str, *, now: float) -> JobRecord:
        """queued/running -> cancelled; a finished job raises JobError naming how it finished."""
        with self._write() as db:
            jid = self._transition(db, job_id, "cancel")
            self._set_state(db, jid, "cancel", "finished_s = ?", (float(now),))
            return self._record(self._find(db, jid))

    # ------------------------------------------------------------------ results

    def record_result(self, job_id: str, rec: UnitRecord) -> bool:
        """Store one accepted unit result, durably, before returning; False (and nothing stored) if
        that unit already has one. A job in any state takes results: a late one is never lost."""
        return self.record_results(job_id, [rec]) == 1

    def record_results(self, job_id: str, recs: Iterable[UnitRecord]) -> int:
        """`record_result` for many at once, in one transaction (one fsync); returns how many were
        new. A bad record stores none of them."""
        rows = []
        for rec in recs:
            if not isinstance(rec.chunk, str) or not _HASH_RE.fullmatch(rec.chunk):
                raise JobError(f"unit result chunk {rec.chunk!r:.80}: not a chunk hash (64 lowercase hex)")
            rows.append(
                (
                    *_unit_key(rec.unit),
                    rec.chunk,
                    _clip(str(rec.peer), LABEL_CHARS_MAX),
                    _clip(str(rec.backend), LABEL_CHARS_MAX),
                    float(rec.seconds),
                    float(rec.at_s),
                )
            )
        with self._write() as db:
            jid = self._find(db, job_id)[0]
            cur = db.executemany(
                f"""INSERT OR IGNORE INTO results (job_id, {_UNIT_COLS}, chunk, peer, backend, seconds,
                    at_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(jid, *row) for row in rows],
            )
            return max(cur.rowcount, 0)

    def results(self, job_id: str) -> list[UnitRecord]:
        """The job's unit results in canonical order: frame, pass, then row and column of the bucket."""
        jid = self.get(job_id).id
        rows = self._read(
            f"""SELECT {_UNIT_COLS}, chunk, peer, backend, seconds, at_s FROM results
                WHERE job_id = ? ORDER BY {_UNIT_ORDER}""",
            (jid,),
        )
        return [
            UnitRecord(
                unit=WorkUnit(frame=f, x0=x0, y0=y0, width=w, height=h, pass_index=p, pass_count=n),
                chunk=chunk,
                peer=peer,
                backend=backend,
                seconds=seconds,
                at_s=at,
            )
            for f, p, y0, x0, w, h, n, chunk, peer, backend, seconds, at in rows
        ]

    def discard_results(self, job_id: str, units: Iterable[WorkUnit]) -> int:
        """Void these units' results (a convicted peer's, or ones whose chunk is gone); returns the
        rows removed. One transaction: all of them go, or none."""
        keys = [_unit_key(u) for u in units]
        with self._write() as db:
            jid = self._find(db, job_id)[0]
            cur = db.executemany(
                f"DELETE FROM results WHERE job_id = ? AND ({_UNIT_COLS}) = (?, ?, ?, ?, ?, ?, ?)",
                [(jid, *k) for k in keys],
            )
            return max(cur.rowcount, 0)

    def result_chunks(self, job_id: str) -> list[str]:
        """The chunk hashes holding the job's results, once each, in canonical unit order."""
        return list(dict.fromkeys(r.chunk for r in self.results(job_id)))


def _unit_key(u: WorkUnit) -> tuple[int, ...]:
    """A unit's row key, every WorkUnit field, in `_UNIT_COLS` order."""
    return (u.frame, u.pass_index, u.y0, u.x0, u.width, u.height, u.pass_count)


def _check_priority(priority: int) -> None:
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise JobError(f"priority {priority!r}: a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}")


def _clip(text: str, chars_max: int) -> str:
    """`text` cut to at most `chars_max` characters, ending in an ellipsis when cut."""
    return text if len(text) <= chars_max else text[: chars_max - 1] + "\u2026"
