"""Every peer's persistent job queue (SQLite at `$MESHRENDER_HOME/jobs.sqlite`).

A job is a scene id, render settings, a frame range and a backend class; its id is the BLAKE3
hash of that content, so submitting the same job twice finds the first (a failed or cancelled one
is queued again, keeping the results it has). Jobs run one after another: highest priority first,
then oldest submission. Each accepted unit result is one row naming the chunk that holds it in the
chunk store, written durably before the coordinator goes on: a coordinator killed mid-frame
resumes with every returned unit, and a restarted peer finds its queue as it was.

WAL mode with `synchronous = FULL`: a result row is on disk when `record_result` returns (a
crash must not lose a unit the worker was told was accepted). Several processes may open the
file: the running peer and CLI commands that read it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import blake3
import msgspec
from msgspec import Meta

from .errors import MeshrenderError
from .settings import RenderSettings
from .units import FRAME_MAX, WorkUnit

SCHEMA_VERSION = 1
JOB_BACKENDS = ("any", "cpu", "gpu")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FRAMES_PER_JOB_MAX = 100_000  # an animation longer than an hour at 24 fps is several jobs
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
TEXT_CHARS_MAX = 2000  # an error message or a submitter's name, truncated past this
OUTPUTS_MAX = 3 * FRAMES_PER_JOB_MAX + 1  # EXR + PNG per frame, and the provenance record
ID_PREFIX_MIN = 4  # hex digits a user must type to name a job
BUSY_TIMEOUT_MS = 10_000  # another process holds the write lock: wait this long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
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
    outputs     TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS results (
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
) WITHOUT ROWID;
"""


class JobError(MeshrenderError):
    """An unknown or ambiguous job id, a bad job, or a state change that is not allowed."""


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scene_id: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    settings: RenderSettings
    first_frame: Annotated[int, Meta(ge=0, le=FRAME_MAX)] = 0
    last_frame: Annotated[int, Meta(ge=0, le=FRAME_MAX)] = 0
    backend: str = "any"


_spec_encoder = msgspec.msgpack.Encoder()
_spec_decoder = msgspec.msgpack.Decoder(JobSpec)


def validate_spec(spec: JobSpec) -> None:
    if spec.last_frame < spec.first_frame:
        raise JobError(f"frames {spec.first_frame}..{spec.last_frame}: the last comes before the first")
    if spec.last_frame - spec.first_frame + 1 > FRAMES_PER_JOB_MAX:
        raise JobError(
            f"{spec.last_frame - spec.first_frame + 1} frames in one job; at most {FRAMES_PER_JOB_MAX}"
        )
    if spec.backend not in JOB_BACKENDS:
        raise JobError(f"backend {spec.backend!r}: one of {', '.join(JOB_BACKENDS)}")


def job_id(spec: JobSpec) -> str:
    return blake3.blake3(_spec_encoder.encode(spec)).hexdigest()


@dataclass(frozen=True)
class JobRecord:
    id: str
    spec: JobSpec
    priority: int
    state: str
    submitted_s: float
    started_s: float | None
    finished_s: float | None
    error: str | None
    units_total: int
    units_done: int
    submitter: str
    outputs: list[str]
    seq: int


@dataclass(frozen=True)
class UnitRecord:
    unit: WorkUnit
    chunk: str
    peer: str
    backend: str
    seconds: float
    at_s: float


_COLS = (
    "id, spec, priority, state, submitted_s, started_s, finished_s, error, units_total, submitter, "
    "outputs, seq"
)
_ORDER = """CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END,
            CASE WHEN state IN ('running', 'queued') THEN -priority ELSE 0 END,
            CASE WHEN state IN ('running', 'queued') THEN seq ELSE -coalesce(finished_s, submitted_s) END"""


class JobDB:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                db.close()
                raise JobError(
                    f"{self.path}: job database schema {version} is newer than this meshrender's "
                    f"({SCHEMA_VERSION}); upgrade meshrender to open it"
                )
            db.executescript(
                "BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        except sqlite3.DatabaseError as exc:
            raise JobError(f"{self.path}: not a usable job database: {exc}") from None
        self._db = db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JobDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, args=()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _record(self, row) -> JobRecord:
        import json

        (jid, spec, priority, state, submitted, started, finished, error, total, submitter, outputs, seq) = (
            row
        )
        (done,) = self._db.execute("SELECT count(*) FROM results WHERE job_id = ?", (jid,)).fetchone()
        spec = _spec_decoder.decode(spec)
        return JobRecord(jid, spec, priority, state, submitted, started, finished, error, total, done,
                         submitter, json.loads(outputs), seq)  # fmt: skip

    # ------------------------------------------------------------------ the queue
    def submit(
        self, spec: JobSpec, *, priority: int = 0, now: float, submitter: str = ""
    ) -> tuple[JobRecord, bool]:
        validate_spec(spec)
        _check_priority(priority)
        jid = job_id(spec)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT state FROM jobs WHERE id = ?", (jid,)).fetchone()
                (seq,) = db.execute("SELECT coalesce(max(seq), 0) + 1 FROM jobs").fetchone()
                created = True
                if row is None:
                    db.execute(
                        f"INSERT INTO jobs ({_COLS}) VALUES (?, ?, ?, 'queued', ?, NULL, NULL, NULL, 0, ?, '[]', ?)",  # noqa: E501
                        (jid, _spec_encoder.encode(spec), priority, now, submitter[:TEXT_CHARS_MAX], seq),
                    )
                elif row[0] in ("failed", "cancelled"):
                    db.execute(
                        """UPDATE jobs SET state = 'queued', error = NULL, priority = ?, seq = ?,
                           finished_s = NULL WHERE id = ?""",
                        (priority, seq, jid),
                    )
                else:
                    created = False
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.get(jid), created

    def get(self, job_id_or_prefix: str) -> JobRecord:
        text = str(job_id_or_prefix).lower()
        if len(text) < ID_PREFIX_MIN or any(c not in "0123456789abcdef" for c in text):
            raise JobError(f"job id {job_id_or_prefix!r}: give at least {ID_PREFIX_MIN} hex digits of it")
        rows = self._db.execute(f"SELECT {_COLS} FROM jobs WHERE id LIKE ? LIMIT 2", (text + "%",)).fetchall()
        if not rows:
            raise JobError(f"no job {job_id_or_prefix!r} in {self.path}")
        if len(rows) > 1:
            raise JobError(f"job id {job_id_or_prefix!r} is ambiguous: give more digits")
        return self._record(rows[0])

    def list(self, states: Iterable[str] | None = None) -> list[JobRecord]:
        rows = self._db.execute(f"SELECT {_COLS} FROM jobs ORDER BY {_ORDER}").fetchall()
        wanted = None if states is None else set(states)
        return [self._record(r) for r in rows if wanted is None or r[3] in wanted]

    def next_queued(self) -> JobRecord | None:
        row = self._db.execute(
            f"SELECT {_COLS} FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq LIMIT 1"
        ).fetchone()
        return None if row is None else self._record(row)

    def running(self) -> list[JobRecord]:
        return self.list(["running"])

    def set_priority(self, jid: str, priority: int) -> None:
        _check_priority(priority)
        self._change(jid, ("queued", "running"), "priority = ?", (priority,))

    def start(self, jid: str, *, now: float, units_total: int) -> None:
        sets = "state = 'running', started_s = coalesce(started_s, ?), units_total = ?"
        self._change(jid, ("queued", "running"), sets, (now, units_total))

    def finish(self, jid: str, *, now: float, outputs: list[str]) -> None:
        import json

        if len(outputs) > OUTPUTS_MAX:
            raise JobError(f"{len(outputs)} outputs; at most {OUTPUTS_MAX}")
        self._change(
            jid, ("running",), "state = 'done', finished_s = ?, outputs = ?", (now, json.dumps(outputs))
        )

    def fail(self, jid: str, *, now: float, error: str) -> None:
        self._change(jid, ("queued", "running"), "state = 'failed', finished_s = ?, error = ?",
                     (now, error[:TEXT_CHARS_MAX]))  # fmt: skip

    def cancel(self, jid: str, *, now: float) -> JobRecord:
        self._change(jid, ("queued", "running"), "state = 'cancelled', finished_s = ?", (now,))
        return self.get(jid)

    def _change(self, jid: str, allowed: tuple[str, ...], assignments: str, args: tuple) -> None:
        rec = self.get(jid)
        if rec.state not in allowed:
            raise JobError(f"job {rec.id[:16]} is {rec.state}; this needs it {' or '.join(allowed)}")
        cur = self._write(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND state IN ({','.join('?' * len(allowed))})",
            (*args, rec.id, *allowed),
        )
        if cur.rowcount != 1:
            raise JobError(f"job {rec.id[:16]} changed state meanwhile; try again")

    # ------------------------------------------------------------------ results
    def record_result(self, jid: str, rec: UnitRecord) -> bool:
        u = rec.unit
        cur = self._write(
            "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (jid, u.frame, u.pass_index, u.y0, u.x0, u.width, u.height, u.pass_count, rec.chunk,
             rec.peer[:TEXT_CHARS_MAX], rec.backend[:TEXT_CHARS_MAX], rec.seconds, rec.at_s),
        )  # fmt: skip
        return cur.rowcount == 1

    def results(self, jid: str) -> list[UnitRecord]:
        rows = self._db.execute(
            """SELECT frame, pass, y0, x0, width, height, passes, chunk, peer, backend, seconds, at_s
               FROM results WHERE job_id = ? ORDER BY frame, pass, y0, x0""",
            (jid,),
        ).fetchall()
        return [
            UnitRecord(
                WorkUnit(frame=f, x0=x0, y0=y0, width=w, height=h, pass_index=p, pass_count=n),
                chunk,
                peer,
                backend,
                seconds,
                at,
            )  # fmt: skip
            for f, p, y0, x0, w, h, n, chunk, peer, backend, seconds, at in rows
        ]

    def discard_results(self, jid: str, units: Iterable[WorkUnit]) -> int:
        removed = 0
        for u in units:
            cur = self._write(
                """DELETE FROM results WHERE job_id = ? AND frame = ? AND pass = ? AND y0 = ? AND x0 = ?
                   AND width = ? AND height = ? AND passes = ?""",
                (jid, u.frame, u.pass_index, u.y0, u.x0, u.width, u.height, u.pass_count),
            )
            removed += cur.rowcount
        return removed

    def result_chunks(self, jid: str) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT chunk FROM results WHERE job_id = ?", (jid,))]


def _check_priority(priority: int) -> None:
    if not isinstance(priority, int) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise JobError(f"priority {priority!r}: a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}")
