"""A running peer's queue: jobs run one after another, and party members may submit, list, cancel
and fetch results over `/meshrender/control/1`.

`QueueRunner(peer, db)` runs in the peer's nursery. It takes the job to run from the queue file
(`jobs.JobDB`): a job left `running` by a peer that died first (it resumes: units already stored
are not rendered again), then the highest priority queued one. It fetches the job's scene from the
party if this peer does not hold it, then coordinates the job (`coordinate.JobRun`). While a job
runs it reads the job's state every CANCEL_POLL_S: whoever cancelled it (this peer's control
handler, or `meshrender cancel` in another process on this machine, which writes the same file),
every worker is told at once and stops the unit in its kernel. Nothing waits in silence: a job
that accepts no unit for a while, or a scene fetch that gets no byte, is reported (a log line and a
`job-stalled` event naming who holds what and why: `distributed.watch_job`), and a job stuck past
its bounds fails with that reason, so the queue moves on.

The queue file is the one source of truth, so local commands (`meshrender submit/jobs/cancel/
results` without `--to`) simply open it, with or without a running peer: a job submitted while no
peer runs is there when one starts, and a restarted peer finds its queue as it was. A job's scene
is pinned in the store from submission to the job's end, so the quota never evicts it.

`handle_control` answers one control request from a member: `SubmitJob` (the scene is fetched
from the party first, so the submitter may disconnect as soon as it has the answer), `ListJobs`,
`CancelJob`, `SetPriority`, `FetchResults` (the job's result files, in pieces).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from .coordinate import JobRun, keep_reason
from .distributed import JobStalled, watch_job, watch_progress
from .errors import MeshrenderError
from .jobs import JobDB, JobError, JobRecord, JobSpec, job_id
from .protocol import (
    JOBS_LISTED_MAX,
    RESULT_PIECE_BYTES,
    CancelJob,
    Error,
    FetchResults,
    JobInfo,
    JobList,
    ListJobs,
    Msg,
    ResultPiece,
    SetPriority,
    SubmitJob,
)

log = logging.getLogger("meshrender.service")

QUEUE_POLL_S = 0.5  # how often an idle runner looks for jobs that other processes queued
CANCEL_POLL_S = 0.2  # how often a running job's state is read: a cancel reaches workers within 1 s
SCENE_FETCH_S = 600.0  # fetching a job's scene from the party; a scene nobody sends fails the job


class ServiceError(MeshrenderError):
    pass


def job_info(rec: JobRecord) -> JobInfo:
    return JobInfo(
        id=rec.id,
        scene_id=rec.spec.scene_id,
        state=rec.state,
        priority=rec.priority,
        first_frame=rec.spec.first_frame,
        last_frame=rec.spec.last_frame,
        units_done=rec.units_done,
        units_total=rec.units_total,
        submitted_s=rec.submitted_s,
        started_s=rec.started_s,
        finished_s=rec.finished_s,
        error=None if rec.error is None else rec.error[:400],
        outputs=[Path(p).name for p in rec.outputs],  # images and job.json
    )


def submit_local(db: JobDB, store, spec: JobSpec, *, priority: int = 0, submitter: str = "") -> JobRecord:
    """Queue `spec` (its scene already in `store`), pinning the scene until the job ends."""
    if not store.has_scene(spec.scene_id):
        raise ServiceError(f"scene {spec.scene_id[:16]} is not in this peer's store")
    store.pin(spec.scene_id, keep_reason(job_id(spec)))
    rec, _ = db.submit(spec, now=time.time(), submitter=submitter, priority=priority)
    return rec


class QueueRunner:
    def __init__(self, peer, db: JobDB):
        self.peer = peer
        self.db = db
        self.current: JobRun | None = None
        self._wake = trio.Event()

    def wake(self) -> None:
        """Look at the queue now (a job was submitted, or cancelled)."""
        self._wake.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            rec = self._next()
            if rec is None:
                with trio.move_on_after(QUEUE_POLL_S):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            await self._run(rec)

    def _next(self) -> JobRecord | None:
        running = self.db.running()
        return running[0] if running else self.db.next_queued()

    async def _run(self, rec: JobRecord) -> None:
        peer, db, jid = self.peer, self.db, rec.id
        scene = rec.spec.scene_id
        if not peer.store.has_scene(scene):
            peer._event("job-fetching", job=jid, scene_id=scene)

            def fetching():
                got = peer.transfers["bytes_in"]
                return got, f"job {jid[:12]}: fetching its scene {scene[:16]}: {got:,} bytes in so far"

            try:
                async with trio.open_nursery() as n:
                    n.start_soon(lambda: watch_progress(fetching, on_notice=self._notice(jid)))
                    with trio.fail_after(SCENE_FETCH_S):
                        await peer.fetch_scene(scene)
                    n.cancel_scope.cancel()
            except (Exception, trio.TooSlowError) as exc:
                self._fail(jid, f"its scene {scene[:16]} is not here and the party did not send it: {exc}")
                return
        run = self.current = JobRun(peer, db, jid, render_self=peer.render)
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._watch, run)
                n.start_soon(self._watch_stall, run)
                await run.run()
                n.cancel_scope.cancel()
        except JobError as exc:  # cancelled as it finished, or a store failure: the queue says which
            if self._state(jid) not in ("cancelled", "done"):
                self._fail(jid, str(exc))
        except (Exception, trio.TooSlowError) as exc:
            log.exception("job %s failed", jid[:12])
            self._fail(jid, f"{type(exc).__name__}: {exc}")
        finally:
            self.current = None
        if self._state(jid) in ("done", "failed", "cancelled"):
            peer.store.unpin(scene, keep_reason(jid))

    async def _watch(self, run: JobRun) -> None:
        while True:
            await trio.sleep(CANCEL_POLL_S)
            if self._state(run.job_id) == "cancelled":
                run.cancel()
                return

    def _notice(self, jid: str):
        def say(line: str, picture: str = "") -> None:
            log.warning("%s", line)
            self.peer._event("job-stalled", job=jid, reason=line)

        return say

    async def _watch_stall(self, run: JobRun) -> None:
        """Tell who holds what when the job is stuck; fail it when it stays stuck past the bounds."""
        try:
            await watch_job(run, self.peer, on_notice=self._notice(run.job_id))
        except JobStalled as exc:
            self._fail(run.job_id, str(exc))
            run.cancel()

    def _state(self, jid: str) -> str:
        try:
            return self.db.get(jid).state
        except JobError:
            return "gone"

    def _fail(self, jid: str, error: str) -> None:
        log.warning("job %s failed: %s", jid[:12], error)
        try:
            self.db.fail(jid, now=time.time(), error=error)
        except JobError as exc:  # cancelled meanwhile: that stands
            log.info("job %s: %s", jid[:12], exc)
        self.peer._event("job-failed", job=jid, error=error)

    def cancel(self, job: str) -> JobRecord:
        rec = self.db.cancel(job, now=time.time())
        if self.current is not None and self.current.job_id == rec.id:
            self.current.cancel()  # at once, not at the next poll
        self.wake()
        return rec


def listing(db: JobDB) -> list[JobRecord]:
    return db.list()[:JOBS_LISTED_MAX]


async def handle_control(peer, runner: QueueRunner, msg: Msg, remote: str, send) -> None:
    """Answer one control request from member `remote`; `send(msg)` writes to the asker."""
    db = runner.db
    try:
        match msg:
            case SubmitJob():
                spec = JobSpec(scene_id=msg.scene_id, settings=msg.settings, first_frame=msg.first_frame,
                               last_frame=msg.last_frame, backend=msg.backend)  # fmt: skip
                if not peer.store.has_scene(spec.scene_id):
                    with trio.fail_after(SCENE_FETCH_S):
                        await peer.fetch_scene(spec.scene_id)
                rec = submit_local(db, peer.store, spec, priority=msg.priority, submitter=remote)
                peer._event("job-submitted", job=rec.id, by=remote, priority=rec.priority)
                runner.wake()
                await send(JobList(jobs=[job_info(rec)]))
            case ListJobs():
                await send(JobList(jobs=[job_info(r) for r in listing(db)]))
            case CancelJob():
                rec = runner.cancel(msg.job)
                peer._event("job-cancelled", job=rec.id, by=remote)
                await send(JobList(jobs=[job_info(rec)]))
            case SetPriority():
                db.set_priority(msg.job, msg.priority)
                await send(JobList(jobs=[job_info(db.get(msg.job))]))
            case FetchResults():
                rec = db.get(msg.job)
                await send(JobList(jobs=[job_info(rec)]))
                await _send_results(peer, rec, send)
            case _:
                await send(Error(reason=f"{type(msg).__name__} is not a control request"))
    except (MeshrenderError, OSError, trio.TooSlowError) as exc:
        await send(Error(reason=str(exc)[:400] or type(exc).__name__))


async def _send_results(peer, rec: JobRecord, send) -> None:
    if rec.state != "done":
        return  # the JobList said so: nothing follows
    files = [Path(p) for p in rec.outputs]  # frame images, then job.json
    for i, path in enumerate(files):
        last_file = i == len(files) - 1
        with open(path, "rb") as f:
            while True:
                data = await trio.to_thread.run_sync(f.read, RESULT_PIECE_BYTES)
                end = len(data) < RESULT_PIECE_BYTES
                await send(ResultPiece(name=path.name, data=data, end_of_file=end, last=end and last_file))
                if end:
                    break
