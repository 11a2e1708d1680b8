"""The job queue: content ids, resubmission, run order, id prefixes, the state machine, results,
persistence across restarts and processes, schema versions, damaged files and spec validation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meshrender import jobs
from meshrender.jobs import (
    ERROR_CHARS_MAX,
    FRAMES_PER_JOB_MAX,
    ID_PREFIX_MIN,
    LABEL_CHARS_MAX,
    PRIORITY_MAX,
    SCHEMA_VERSION,
    JobDB,
    JobError,
    JobSpec,
    UnitRecord,
    job_id,
    spec_bytes,
    validate_spec,
)
from meshrender.settings import RenderSettings
from meshrender.units import WorkUnit, frame_units

SCENE = "ab" * 32


def spec(*, seed: int = 0, spp: int = 64, first: int = 0, last: int = 0, backend: str = "any") -> JobSpec:
    settings = RenderSettings(width=32, height=32, spp=spp, pass_spp=16, bucket_px=16, seed=seed)
    return JobSpec(scene_id=SCENE, settings=settings, first_frame=first, last_frame=last, backend=backend)


def result(unit: WorkUnit, n: int = 0, peer: str = "peer-a") -> UnitRecord:
    return UnitRecord(unit=unit, chunk=f"{n:064x}", peer=peer, backend="cpu", seconds=0.5, at_s=100.0 + n)


@pytest.fixture
def db(tmp_path: Path):
    with JobDB(tmp_path / "home" / "jobs.sqlite") as d:
        yield d


def ids(records) -> list[str]:
    return [r.id for r in records]


# ---------------------------------------------------------------------------- ids and specs


def test_job_id_is_the_hash_of_the_content():
    a, b = spec(seed=1), spec(seed=1)
    assert a is not b and job_id(a) == job_id(b)
    assert len(job_id(a)) == 64 and all(c in "0123456789abcdef" for c in job_id(a))
    assert job_id(spec(seed=2)) != job_id(a)  # different settings
    assert job_id(spec(seed=1, last=3)) != job_id(a)  # different frames
    assert job_id(spec(seed=1, backend="cpu")) != job_id(a)  # different backend class


def test_job_ids_stay_the_same_across_versions():
    # A queue on disk and a resubmitted render find each other by this id. If this fails, JobSpec
    # or RenderSettings changed its encoding: every stored job and its results would be orphaned.
    s = JobSpec(scene_id=SCENE, settings=RenderSettings())
    assert job_id(s) == "d2d2a42c0d8a3610ad2ec0d10a79dec8c87342427e1db8945097921f27daa1de"


@pytest.mark.parametrize(
    "bad, words",
    [
        (spec(first=5, last=4), "last frame comes before the first"),
        (spec(first=0, last=FRAMES_PER_JOB_MAX), f"at most {FRAMES_PER_JOB_MAX}"),
        (spec(backend="tpu"), "backend 'tpu'"),
        (JobSpec(scene_id="not-hex", settings=RenderSettings()), "scene_id"),
        (JobSpec(scene_id=SCENE, settings=RenderSettings(width=0)), "settings.width"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(db, bad, words):
    with pytest.raises(JobError, match="job spec|frame|backend") as e:
        validate_spec(bad)
    assert words in str(e.value)
    with pytest.raises(JobError):
        db.submit(bad, now=1.0)
    assert db.list() == []


def test_the_largest_frame_range_is_accepted(db):
    rec, _ = db.submit(spec(first=10, last=10 + FRAMES_PER_JOB_MAX - 1), now=1.0)
    assert rec.spec.last_frame == 10 + FRAMES_PER_JOB_MAX - 1


def test_spec_round_trips_exactly(db):
    s = JobSpec(
        scene_id=SCENE,
        settings=RenderSettings(width=640, height=360, spp=7, pass_spp=3, exposure=-1.25, seed=99),
        first_frame=3,
        last_frame=9,
        backend="gpu",
    )
    rec, _ = db.submit(s, now=1.0)
    assert db.get(rec.id).spec == s
    assert job_id(db.get(rec.id).spec) == rec.id


# ---------------------------------------------------------------------------- submitting


def test_submitting_the_same_job_again_returns_the_first(db):
    first, created = db.submit(spec(), priority=5, now=10.0, submitter="alice")
    assert created and first.state == "queued" and first.id == job_id(spec())
    again, created = db.submit(spec(), priority=-3, now=20.0, submitter="bob")
    assert not created
    assert again == first  # priority, submission time, submitter and place in the queue all kept
    assert ids(db.list()) == [first.id]


def test_submitting_a_finished_job_again_returns_it_done(db):
    rec, _ = db.submit(spec(), now=1.0)
    db.start(rec.id, now=2.0, units_total=1)
    db.finish(rec.id, now=3.0, outputs=["out/frame_0000.exr"])
    again, created = db.submit(spec(), now=4.0)
    assert not created and again.state == "done" and again.outputs == ["out/frame_0000.exr"]


@pytest.mark.parametrize("how", ["cancel", "fail"])
def test_resubmitting_a_cancelled_or_failed_job_queues_it_again_with_its_results(db, how):
    rec, _ = db.submit(spec(seed=1), priority=0, now=1.0)
    other, _ = db.submit(spec(seed=2), priority=7, now=2.0)
    db.start(rec.id, now=3.0, units_total=4)
    unit = frame_units(rec.spec.settings)[0]
    db.record_result(rec.id, result(unit))
    if how == "cancel":
        db.cancel(rec.id, now=4.0)
    else:
        db.fail(rec.id, now=4.0, error="worker crashed")

    again, created = db.submit(spec(seed=1), priority=7, now=5.0, submitter="carol")
    assert created
    assert again.state == "queued" and again.error is None
    assert again.started_s is None and again.finished_s is None
    assert again.priority == 7 and again.submitter == "carol" and again.submitted_s == 5.0
    assert again.seq > other.seq
    assert [r.unit for r in db.results(rec.id)] == [unit] and again.units_done == 1
    # same priority as `other`, submitted after it: runs after it
    assert ids(db.list(["queued"])) == [other.id, rec.id]
    db.start(rec.id, now=6.0, units_total=4)
    assert db.get(rec.id).started_s == 6.0  # the new run's start, not the cancelled one's


def test_the_queue_length_is_bounded(db, monkeypatch):
    monkeypatch.setattr(jobs, "QUEUE_JOBS_MAX", 2)
    a, _ = db.submit(spec(seed=1), now=1.0)
    db.submit(spec(seed=2), now=2.0)
    with pytest.raises(JobError, match="2 jobs are queued or running"):
        db.submit(spec(seed=3), now=3.0)
    assert db.submit(spec(seed=1), now=4.0) == (db.get(a.id), False)  # a known job is still found
    db.cancel(a.id, now=5.0)
    assert db.submit(spec(seed=3), now=6.0)[1]


def test_submitter_and_priority_are_bounded(db):
    with pytest.raises(JobError, match=f"priority {PRIORITY_MAX + 1}"):
        db.submit(spec(), priority=PRIORITY_MAX + 1, now=1.0)
    with pytest.raises(JobError, match="priority"):
        db.submit(spec(), priority=True, now=1.0)
    rec, _ = db.submit(spec(), priority=PRIORITY_MAX, now=1.0, submitter="x" * 10_000)
    assert len(rec.submitter) == LABEL_CHARS_MAX and rec.submitter.startswith("xxx")


# ---------------------------------------------------------------------------- run order


def test_jobs_run_by_priority_then_submission(db):
    low, _ = db.submit(spec(seed=1), priority=-5, now=1.0)
    a, _ = db.submit(spec(seed=2), priority=0, now=2.0)
    urgent, _ = db.submit(spec(seed=3), priority=10, now=3.0)
    b, _ = db.submit(spec(seed=4), priority=0, now=0.5)  # the clock going back changes nothing
    assert db.next_queued().id == urgent.id
    assert ids(db.list()) == [urgent.id, a.id, b.id, low.id]
    db.start(urgent.id, now=4.0, units_total=1)
    assert db.next_queued().id == a.id


def test_list_shows_running_then_queued_then_newest_finished(db):
    recs = [db.submit(spec(seed=i), now=float(i))[0] for i in range(6)]
    db.start(recs[0].id, now=10.0, units_total=1)
    db.finish(recs[0].id, now=11.0, outputs=[])
    db.cancel(recs[1].id, now=13.0)
    db.fail(recs[2].id, now=12.0, error="no")
    db.start(recs[4].id, now=14.0, units_total=1)
    want = [recs[4], recs[3], recs[5], recs[1], recs[2], recs[0]]
    assert ids(db.list()) == ids(want)
    assert ids(db.list(["done", "cancelled"])) == [recs[1].id, recs[0].id]
    assert db.list([]) == []
    with pytest.raises(JobError, match="job state 'finished'"):
        db.list(["finished"])
    assert ids(db.running()) == [recs[4].id]


def test_set_priority_reorders_the_queue(db):
    a, _ = db.submit(spec(seed=1), now=1.0)
    b, _ = db.submit(spec(seed=2), now=2.0)
    assert db.next_queued().id == a.id
    db.set_priority(b.id[:8], 3)
    assert db.next_queued().id == b.id and db.get(b.id).priority == 3
    db.set_priority(b.id, -3)
    assert ids(db.list()) == [a.id, b.id]
    with pytest.raises(JobError, match="priority -1001"):
        db.set_priority(a.id, -1001)
    db.start(a.id, now=3.0, units_total=1)
    db.set_priority(a.id, 9)  # a running job may be reprioritised too
    db.finish(a.id, now=4.0, outputs=[])
    with pytest.raises(JobError, match=r"already finished \(done\)"):
        db.set_priority(a.id, 1)
    assert db.get(a.id).priority == 9


# ---------------------------------------------------------------------------- naming jobs


def _two_ids_sharing_a_prefix() -> tuple[JobSpec, JobSpec]:
    seen: dict[str, JobSpec] = {}
    for seed in range(100_000):
        s = spec(seed=seed)
        p = job_id(s)[:ID_PREFIX_MIN]
        if p in seen:
            return seen[p], s
        seen[p] = s
    raise AssertionError("no two ids share a prefix")  # pragma: no cover


def test_a_unique_prefix_names_a_job(db):
    rec, _ = db.submit(spec(), now=1.0)
    assert db.get(rec.id[:ID_PREFIX_MIN]).id == rec.id
    assert db.get(rec.id[:10].upper()).id == rec.id
    assert db.get(f" {rec.id}\n").id == rec.id
    assert db.cancel(rec.id[:6], now=2.0).state == "cancelled"


def test_ambiguous_unknown_and_too_short_ids_say_what_is_wrong(db):
    s1, s2 = _two_ids_sharing_a_prefix()
    a, _ = db.submit(s1, now=1.0)
    b, _ = db.submit(s2, now=2.0)
    prefix = a.id[:ID_PREFIX_MIN]
    with pytest.raises(JobError, match=f"job id {prefix} is ambiguous") as e:
        db.get(prefix)
    assert a.id[:12] in str(e.value) and b.id[:12] in str(e.value)
    longer = next(n for n in range(ID_PREFIX_MIN, 65) if a.id[:n] != b.id[:n])
    assert db.get(a.id[:longer]).id == a.id and db.get(b.id[:longer]).id == b.id

    missing = next(p for p in ("0000", "1111", "2222") if not a.id.startswith(p) and not b.id.startswith(p))
    with pytest.raises(JobError, match=f"no job {missing} in .*jobs.sqlite"):
        db.get(missing)
    with pytest.raises(JobError, match=f"at least {ID_PREFIX_MIN}"):
        db.get(a.id[: ID_PREFIX_MIN - 1])
    with pytest.raises(JobError, match="at least"):
        db.get("zzzz")
    with pytest.raises(JobError, match="at least"):
        db.get("a%__")  # not a LIKE pattern either
    with pytest.raises(JobError, match="no job"):
        db.results(missing)
    with pytest.raises(JobError, match="no job"):
        db.record_result(missing, result(WorkUnit(x0=0, y0=0, width=1, height=1, pass_index=0)))


# ---------------------------------------------------------------------------- the state machine


def test_a_job_runs_from_queued_to_done(db):
    rec, _ = db.submit(spec(), now=1.0, submitter="alice")
    assert (rec.state, rec.started_s, rec.finished_s, rec.units_total) == ("queued", None, None, 0)
    db.start(rec.id, now=2.0, units_total=8)
    db.start(rec.id, now=5.0, units_total=9)  # a coordinator resuming after a crash
    running = db.get(rec.id)
    assert (running.state, running.started_s, running.units_total) == ("running", 2.0, 9)
    db.finish(rec.id, now=6.0, outputs=["a.exr", "a.png"])
    done = db.get(rec.id)
    assert (done.state, done.started_s, done.finished_s, done.outputs) == (
        "done",
        2.0,
        6.0,
        ["a.exr", "a.png"],
    )
    assert done.submitted_s == 1.0 and done.submitter == "alice" and done.error is None


def test_failing_keeps_the_reason_clipped(db):
    rec, _ = db.submit(spec(), now=1.0)
    db.fail(rec.id, now=2.0, error="E" * (ERROR_CHARS_MAX * 3))
    failed = db.get(rec.id)
    assert failed.state == "failed" and failed.finished_s == 2.0
    assert len(failed.error) == ERROR_CHARS_MAX and failed.error.startswith("EEE")


def _queued(db):
    return db.submit(spec(seed=41), now=1.0)[0].id


def _running(db):
    jid = _queued(db)
    db.start(jid, now=2.0, units_total=1)
    return jid


def _done(db):
    jid = _running(db)
    db.finish(jid, now=3.0, outputs=[])
    return jid


def _failed(db):
    jid = _running(db)
    db.fail(jid, now=3.0, error="boom")
    return jid


def _cancelled(db):
    jid = _queued(db)
    db.cancel(jid, now=3.0)
    return jid


ACTIONS = {
    "start": lambda db, j: db.start(j, now=9.0, units_total=1),
    "finish": lambda db, j: db.finish(j, now=9.0, outputs=[]),
    "fail": lambda db, j: db.fail(j, now=9.0, error="late"),
    "cancel": lambda db, j: db.cancel(j, now=9.0),
}


@pytest.mark.parametrize(
    "make, action, words",
    [
        (_queued, "finish", "cannot finish job .*: it is queued, and that needs it running"),
        (_done, "start", r"cannot start job .*: it already finished \(done\)"),
        (_done, "finish", r"already finished \(done\)"),
        (_done, "fail", r"already finished \(done\)"),
        (_done, "cancel", r"cannot cancel job .*: it already finished \(done\)"),
        (_failed, "cancel", r"already finished \(failed\)"),
        (_failed, "start", r"already finished \(failed\)"),
        (_failed, "fail", r"cannot fail job .*: it already finished \(failed\)"),
        (_cancelled, "cancel", r"already finished \(cancelled\)"),
        (_cancelled, "finish", r"already finished \(cancelled\)"),
        (_cancelled, "start", r"already finished \(cancelled\)"),
    ],
)
def test_illegal_state_changes_are_refused_naming_the_state(db, make, action, words):
    jid = make(db)
    before = db.get(jid)
    with pytest.raises(JobError, match=words):
        ACTIONS[action](db, jid)
    assert db.get(jid) == before


@pytest.mark.parametrize("make", [_queued, _running])
@pytest.mark.parametrize("action, state", [("cancel", "cancelled"), ("fail", "failed")])
def test_queued_and_running_jobs_can_be_cancelled_or_failed(db, make, action, state):
    jid = make(db)
    ACTIONS[action](db, jid)
    assert db.get(jid).state == state and db.get(jid).finished_s == 9.0
    assert db.next_queued() is None and db.running() == []


def test_start_and_finish_check_their_arguments(db, monkeypatch):
    jid = _queued(db)
    with pytest.raises(JobError, match="units_total -1"):
        db.start(jid, now=1.0, units_total=-1)
    db.start(jid, now=1.0, units_total=4)
    monkeypatch.setattr(jobs, "OUTPUTS_MAX", 2)
    with pytest.raises(JobError, match="3 outputs"):
        db.finish(jid, now=2.0, outputs=["a", "b", "c"])
    with pytest.raises(JobError, match="not a path"):
        db.finish(jid, now=2.0, outputs=["/" * 5000])
    assert db.get(jid).state == "running"


# ---------------------------------------------------------------------------- results


def test_record_result_is_idempotent_and_counts_units(db):
    jid = _running(db)
    unit = WorkUnit(frame=0, x0=16, y0=0, width=16, height=16, pass_index=1)
    assert db.record_result(jid, result(unit, 1, peer="first"))
    assert not db.record_result(jid, result(unit, 2, peer="second"))  # the first result stands
    (kept,) = db.results(jid)
    assert kept == result(unit, 1, peer="first")
    assert db.get(jid).units_done == 1
    # every WorkUnit field is part of the key: the same rectangle over two passes is another unit
    two_passes = WorkUnit(frame=0, x0=16, y0=0, width=16, height=16, pass_index=1, pass_count=2)
    assert db.record_result(jid, result(two_passes, 3))
    assert db.get(jid).units_done == 2


def test_results_come_back_in_canonical_order(db):
    s = spec(first=0, last=1)
    rec, _ = db.submit(s, now=1.0)
    units = [u for f in (0, 1) for u in frame_units(s.settings, frame=f)]
    assert len(units) == 2 * 4 * 4  # 2 frames x 2x2 buckets x 4 passes
    shuffled = units[5:] + units[:5]
    shuffled.reverse()
    for n, u in enumerate(shuffled):
        assert db.record_result(rec.id, result(u, n))
    got = db.results(rec.id)
    assert [r.unit for r in got] == sorted(units, key=lambda u: (u.frame, u.pass_index, u.y0, u.x0))
    assert db.result_chunks(rec.id) == [r.chunk for r in got]
    assert db.get(rec.id).units_done == len(units)


def test_discarding_results_voids_them(db):
    jid = _running(db)
    units = frame_units(spec().settings)
    for n, u in enumerate(units):
        db.record_result(jid, result(u, n, peer="cheat" if n % 2 else "honest"))
    convicted = [r.unit for r in db.results(jid) if r.peer == "cheat"]
    never_there = WorkUnit(frame=7, x0=0, y0=0, width=1, height=1, pass_index=0)
    assert db.discard_results(jid, iter([*convicted, never_there])) == len(convicted)
    assert {r.peer for r in db.results(jid)} == {"honest"}
    assert db.get(jid).units_done == len(units) - len(convicted)
    assert db.discard_results(jid, convicted) == 0
    assert db.discard_results(jid, []) == 0
    assert db.record_result(jid, result(convicted[0], 99, peer="honest"))  # rendered again


def test_results_belong_to_their_job(db):
    a, _ = db.submit(spec(seed=1), now=1.0)
    b, _ = db.submit(spec(seed=2), now=1.0)
    unit = frame_units(a.spec.settings)[0]
    db.record_result(a.id, result(unit, 1))
    assert db.record_result(b.id, result(unit, 2))
    assert db.discard_results(a.id, [unit]) == 1
    assert [r.chunk for r in db.results(b.id)] == [f"{2:064x}"]
    assert (db.get(a.id).units_done, db.get(b.id).units_done) == (0, 1)


def test_a_result_must_name_a_chunk_hash(db):
    jid = _running(db)
    unit = frame_units(spec().settings)[0]
    bad = UnitRecord(unit=unit, chunk="ABC", peer="p", backend="cpu", seconds=1.0, at_s=1.0)
    with pytest.raises(JobError, match="not a chunk hash"):
        db.record_result(jid, bad)
    assert db.results(jid) == []


# ---------------------------------------------------------------------------- persistence


def test_the_queue_survives_a_restart(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with JobDB(path) as db:
        a, _ = db.submit(spec(seed=1), priority=1, now=1.0)
        b, _ = db.submit(spec(seed=2), priority=5, now=2.0)
        c, _ = db.submit(spec(seed=3), priority=1, now=3.0)
        d, _ = db.submit(spec(seed=4), now=4.0)
        db.start(b.id, now=5.0, units_total=8)
        units = frame_units(b.spec.settings)[:3]
        for n, u in enumerate(units):
            db.record_result(b.id, result(u, n))
        db.cancel(d.id, now=6.0)
        before = db.list()
        before_results = db.results(b.id)
    # the process is gone; a new one opens the file
    with JobDB(path) as db:
        assert db.list() == before
        assert ids(db.list()) == [b.id, a.id, c.id, d.id]
        (resume,) = db.running()
        assert (resume.id, resume.started_s, resume.units_total, resume.units_done) == (b.id, 5.0, 8, 3)
        assert db.results(b.id) == before_results
        assert db.next_queued().id == a.id
        assert not db.record_result(b.id, result(units[0], 0))


def test_two_handles_on_one_file_see_each_other(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with JobDB(path) as peer, JobDB(path) as cli:
        rec, _ = peer.submit(spec(), now=1.0)
        assert cli.get(rec.id[:6]).state == "queued"
        peer.start(rec.id, now=2.0, units_total=2)
        unit = frame_units(rec.spec.settings)[0]
        peer.record_result(rec.id, result(unit))
        assert [r.unit for r in cli.results(rec.id)] == [unit]
        cli.cancel(rec.id, now=3.0)  # a CLI command cancels what the peer is running
        assert peer.get(rec.id).state == "cancelled"
        with pytest.raises(JobError, match=r"cannot finish job .*: it already finished \(cancelled\)"):
            peer.finish(rec.id, now=4.0, outputs=[])


def test_the_file_is_in_wal_mode(tmp_path):
    path = tmp_path / "jobs.sqlite"
    JobDB(path).close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def _set_user_version(path: Path, version: int) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute(f"PRAGMA user_version = {version}")
        con.commit()
    finally:
        con.close()


def test_a_newer_schema_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with JobDB(path) as db:
        rec, _ = db.submit(spec(), now=1.0)
    _set_user_version(path, SCHEMA_VERSION + 1)
    with pytest.raises(JobError, match=f"schema version {SCHEMA_VERSION + 1} is newer") as e:
        JobDB(path)
    assert str(path) in str(e.value) and "upgrade meshrender" in str(e.value)
    _set_user_version(path, SCHEMA_VERSION)  # nothing was changed meanwhile
    with JobDB(path) as db:
        assert db.get(rec.id).state == "queued"


def test_a_file_that_is_not_a_database_is_refused_naming_it(tmp_path):
    path = tmp_path / "jobs.sqlite"
    junk = b"this is not SQLite, just some bytes " * 200
    path.write_bytes(junk)
    with pytest.raises(JobError, match="job database is damaged .*not a database") as e:
        JobDB(path)
    assert str(path) in str(e.value)
    assert path.read_bytes() == junk


def test_a_path_that_cannot_hold_a_database_is_refused_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("x")
    path = tmp_path / "a-file" / "jobs.sqlite"
    with pytest.raises(JobError) as e:
        JobDB(path)
    assert str(path) in str(e.value)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(JobError) as e:
        JobDB(folder)
    assert str(folder) in str(e.value)


def test_a_damaged_job_row_is_reported_not_trusted(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with JobDB(path) as db:
        a, _ = db.submit(spec(seed=1), now=1.0)
        b, _ = db.submit(spec(seed=2), now=1.0)
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE jobs SET spec = (SELECT spec FROM jobs WHERE id = ?) WHERE id = ?", (b.id, a.id))
    con.close()
    with JobDB(path) as db, pytest.raises(JobError, match=f"job {a.id[:12]}'s stored spec does not match"):
        db.get(a.id)


# Step 4's layout (schema 1): no units_done column; result rows were counted on every read.
_SCHEMA_V1 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, spec BLOB NOT NULL, priority INTEGER NOT NULL, state TEXT NOT NULL,
    seq INTEGER NOT NULL, submitted_s REAL NOT NULL, started_s REAL, finished_s REAL, error TEXT,
    units_total INTEGER NOT NULL DEFAULT 0, submitter TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE results (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    frame INTEGER NOT NULL, pass INTEGER NOT NULL, y0 INTEGER NOT NULL, x0 INTEGER NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, passes INTEGER NOT NULL,
    chunk TEXT NOT NULL, peer TEXT NOT NULL, backend TEXT NOT NULL, seconds REAL NOT NULL,
    at_s REAL NOT NULL,
    PRIMARY KEY (job_id, frame, pass, y0, x0, width, height, passes)
) WITHOUT ROWID;
PRAGMA user_version = 1;
"""


def test_a_schema_1_queue_opens_with_its_jobs_and_results(tmp_path):
    path = tmp_path / "jobs.sqlite"
    s = spec(seed=5)
    units = frame_units(s.settings)[:2]
    con = sqlite3.connect(path)
    con.executescript(_SCHEMA_V1)
    with con:
        con.execute(
            "INSERT INTO jobs VALUES (?, ?, 2, 'running', 1, 1.0, 2.0, NULL, NULL, 8, 'old', '[]')",
            (job_id(s), spec_bytes(s)),  # as a schema-1 peer wrote it: no settings.denoise
        )
        for n, u in enumerate(units):
            con.execute(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'p', 'cpu', 1.0, 3.0)",
                (job_id(s), u.frame, u.pass_index, u.y0, u.x0, u.width, u.height, u.pass_count, f"{n:064x}"),
            )
    con.close()
    with JobDB(path) as db:
        (rec,) = db.running()
        assert (rec.id, rec.spec, rec.units_total, rec.units_done) == (job_id(s), s, 8, 2)
        assert [r.unit for r in db.results(rec.id)] == sorted(units, key=lambda u: (u.pass_index, u.y0, u.x0))
        db.record_result(rec.id, result(frame_units(s.settings)[2], 9))
        assert db.get(rec.id).units_done == 3
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()


def test_record_results_stores_a_batch_in_one_go_and_counts_the_new_ones(db):
    jid = db.submit(spec(), now=1.0)[0].id
    units = frame_units(spec().settings)
    assert db.record_results(jid, [result(u, n) for n, u in enumerate(units[:3])]) == 3
    # one already there, two new: the first result of a unit stands
    assert (
        db.record_results(jid, [result(units[2], 50, peer="late"), result(units[3], 3), result(units[4], 4)])
        == 2
    )
    got = {r.unit: r for r in db.results(jid)}
    assert len(got) == 5 and got[units[2]].peer == "peer-a"
    assert db.get(jid).units_done == 5
    # a bad record anywhere stores none of the batch
    bad = UnitRecord(unit=units[6], chunk="nope", peer="p", backend="cpu", seconds=0.1, at_s=1.0)
    with pytest.raises(JobError, match="not a chunk hash"):
        db.record_results(jid, [result(units[5], 5), bad])
    assert len(db.results(jid)) == 5
