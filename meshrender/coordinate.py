"""Coordinating one job across the party: the I/O edge around the sans-IO `schedule.Coordinator`.

`JobRun(peer, db, job_id).run()`:
  * reads the job from the peer's queue (`jobs.JobDB`) and the unit results already accepted
    (a restarted coordinator re-renders none of them; a result whose chunk is gone is re-rendered);
  * offers the job to the party's members through a `crew.Crew` (members that join mid-frame get
    an offer at once, lost ones lose their units; crew.py says who is offered it when);
  * carries out what the coordinator decides (leases, revokes, penalties, discards) and feeds it
    what workers send (heartbeats, results, refusals);
  * checks every result before the scheduler sees it (the unit is ours, sizes and sample counts
    fit, every value is finite and non-negative: a peer sending anything else is dropped from the
    job and penalised), and digests its exact bytes: duplicates are compared by that digest;
  * stores each accepted result in the chunk store (named by that digest, kept for the job) and
    records it in the queue. That happens on a thread of its own (`_ResultWriter`), in arrival
    order and in batches: three fsyncs per unit in the trio thread had every worker wait for the
    disk between units. A coordinator killed in the milliseconds between accepting a result and
    committing it renders that unit again on resume; nothing committed is lost;
  * when every unit is in, adds them up in canonical pass order (bit-identical however the frame
    was split) and writes `results/<job>/frame_NNNN.exr|png` and `job.json` (who rendered what,
    on which backend, when).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import trio

from .crew import OUTBOX_MSGS, Crew, backend_class, handle_events
from .film import Film
from .frameview import FrameView
from .jobs import JobDB, JobError, JobSpec, UnitRecord
from .output import denoised_path, write_exr, write_json, write_png
from .protocol import (
    Beat,
    JobEnd,
    JobOffer,
    LeaseRefused,
    UnitDone,
)
from .schedule import Coordinator, Discard, Lease, Penalize, Revoke, ScheduleConfig, Verdict
from .settings import RenderSettings
from .store.chunkstore import CHUNK_BYTES_MAX, ChunkStore
from .store.hashing import chunk_hash
from .units import AOV_CHANNELS, UnitResult, WorkUnit, frame_units

log = logging.getLogger("meshrender.coordinate")

LEASE_LOG_MAX = 100_000  # leases listed in job.json; a longer job lists its first ones
RESULT_BATCH_MAX = 64  # accepted results stored per batch: one commit (one fsync) in each file for all


class StoredResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A unit result as the store keeps it: its chunk hash is the digest duplicates are compared by.
    (omit_defaults: a result without AOVs encodes exactly as before they existed.)"""

    unit: WorkUnit
    sample_counts: list[int]
    sums: bytes  # float32 (passes, h, w, 3), C order
    aov_sums: bytes = b""  # float32 (passes, h, w, AOV_CHANNELS), C order; b"": none


_result_encoder = msgspec.msgpack.Encoder()
_result_decoder = msgspec.msgpack.Decoder(StoredResult)


def encode_result(unit: WorkUnit, sample_counts: list[int], sums: bytes, aov_sums: bytes = b"") -> bytes:
    """The stored chunk; the AOVs are left out when with them it would not fit one chunk."""
    r = StoredResult(unit=unit, sample_counts=list(sample_counts), sums=sums, aov_sums=aov_sums)
    data = _result_encoder.encode(r)
    if aov_sums and len(data) > CHUNK_BYTES_MAX:
        data = _result_encoder.encode(msgspec.structs.replace(r, aov_sums=b""))
    return data


def check_aov(unit: WorkUnit, aov_sums: bytes) -> np.ndarray | None:
    """The AOV sums as an array (None when there are none), or ValueError saying what is wrong."""
    if not aov_sums:
        return None
    shape = (unit.pass_count, unit.height, unit.width, AOV_CHANNELS)
    if len(aov_sums) != 4 * int(np.prod(shape)):
        raise ValueError(f"{len(aov_sums)} bytes of AOV sums for a {shape} unit")
    arr = np.frombuffer(aov_sums, np.float32).reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise ValueError("AOV sums hold NaN or infinite values")
    return arr


def check_result(
    unit: WorkUnit, sample_counts: list[int], sums: bytes, settings: RenderSettings
) -> np.ndarray:
    """The sums as an array, or ValueError saying what is wrong with them."""
    shape = (unit.pass_count, unit.height, unit.width, 3)
    if len(sums) != 4 * int(np.prod(shape)):
        raise ValueError(f"{len(sums)} bytes of sums for a {shape} unit")
    want = [settings.pass_range(k)[1] - settings.pass_range(k)[0] for k in unit.passes]
    if list(sample_counts) != want:
        raise ValueError(f"sample counts {list(sample_counts)[:8]}, expected {want[:8]}")
    arr = np.frombuffer(sums, np.float32).reshape(shape)
    if not np.all(np.isfinite(arr)) or float(arr.min(initial=0.0)) < 0.0:
        raise ValueError("sums hold NaN, infinite or negative radiance")
    return arr


def decode_result(data: bytes, settings: RenderSettings) -> UnitResult:
    r = _result_decoder.decode(data)
    arr = check_result(r.unit, r.sample_counts, r.sums, settings)
    aov = check_aov(r.unit, r.aov_sums)
    return UnitResult(unit=r.unit, sums=arr, sample_counts=list(r.sample_counts), aov_sums=aov)


def job_units(spec: JobSpec) -> list[WorkUnit]:
    """Every unit of the job in queue order: frame after frame, each pass-major."""
    return [
        u for f in range(spec.first_frame, spec.last_frame + 1) for u in frame_units(spec.settings, frame=f)
    ]


def results_dir(home: Path, job_id: str) -> Path:
    return Path(home) / "results" / job_id


def keep_reason(job_id: str) -> str:
    """Why the store keeps a job's chunks: its unit results (`keep`) and its scene (`pin`)."""
    return f"job:{job_id}"


class _ResultWriter:
    """Accepted results stored off the event loop: chunks (one `put_many`), kept for the job, rows
    recorded (one transaction), in arrival order; a discard runs after everything queued before it.
    The thread opens its own `ChunkStore` and `JobDB` on the peer's files (both are made for several
    instances). The first failure (a full disk, say) stops it: `on_failure(exc)` runs once in the
    trio thread, nothing queued after it is stored, and `flush` raises it."""

    def __init__(self, store: ChunkStore, db_path: Path, job_id: str, on_failure):
        self.store_root, self.quota_bytes = store.root, store.quota_bytes
        self.db_path, self.job_id, self.on_failure = db_path, job_id, on_failure
        self.failure: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._work, name=f"results-{self.job_id[:8]}", daemon=True)
        thread.start()
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._queue.put(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)

    def put(self, chunk: bytes, rec: UnitRecord) -> None:
        self._queue.put(("put", chunk, rec))

    def discard(self, units) -> None:
        self._queue.put(("discard", list(units)))

    def call(self, fn) -> None:
        """Run `fn(store, db)` on the writer's thread, after everything queued before it."""
        self._queue.put(("call", fn))

    async def flush(self) -> None:
        """Wait until everything queued so far is stored; raises the writer's failure."""
        done = trio.Event()
        self._queue.put(("flush", done))
        await done.wait()
        if self.failure is not None:
            problem = self.failure
            raise JobError(f"job {self.job_id[:12]}: cannot store unit results: {problem}") from problem

    def notify(self, fn, *args) -> None:
        """Run `fn(*args)` in the trio thread (from the writer's thread), if trio still runs."""
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:  # nobody left to tell
            pass

    def _work(self) -> None:
        store = db = None
        try:
            store = ChunkStore(self.store_root, quota_bytes=self.quota_bytes)
            db = JobDB(self.db_path)
        except BaseException as exc:
            self._fail(exc)
        try:
            pending = None  # an item read while filling a batch: it goes next, so order holds
            stopping = False  # the end was read while filling a batch: stop after it
            while not stopping:
                item, pending = (pending or self._queue.get()), None
                if item is None:
                    return
                kind = item[0]
                if kind == "flush":
                    self.notify(item[1].set)
                    continue
                if self.failure is not None:
                    continue  # stopped: later results must not land after a gap
                batch = [item]
                while kind == "put" and len(batch) < RESULT_BATCH_MAX:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stopping = True
                    elif more[0] == "put":
                        batch.append(more)
                        continue
                    pending = more
                    break
                try:
                    if kind == "discard":
                        db.discard_results(self.job_id, item[1])
                    elif kind == "call":
                        item[1](store, db)
                    else:
                        store.put_many([(chunk, rec.chunk) for _, chunk, rec in batch])
                        store.keep(keep_reason(self.job_id), [rec.chunk for _, _, rec in batch])
                        db.record_results(self.job_id, [rec for _, _, rec in batch])
                except BaseException as exc:
                    self._fail(exc)
        finally:
            for f in (store, db):
                if f is not None:
                    f.close()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            log.error("job %s: storing unit results failed: %s", self.job_id[:12], exc)
            self.notify(self.on_failure, exc)


class JobRun:
    def __init__(
        self,
        peer,
        db: JobDB,
        job_id: str,
        *,
        render_self: bool = True,
        config: ScheduleConfig | None = None,
        on_progress=None,
    ):
        self.peer = peer
        self.db = db
        self.record = db.get(job_id)
        self.job_id = self.record.id
        self.spec = self.record.spec
        self.render_self = render_self
        # the peer's --verify; the job id seeds which units are spot-checked; our own renderer's
        # results settle a dispute it is part of
        self.config = config or ScheduleConfig(spot_check_fraction=peer.verify, seed=int(self.job_id[:8], 16),
                                               trusted=peer.peer_id if render_self else "")  # fmt: skip
        self.on_progress = on_progress
        self.units_by_peer: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.coordinator: Coordinator | None = None
        self.backend = ""
        self._events_send, self._events_receive = trio.open_memory_channel(OUTBOX_MSGS)
        self.crew = Crew(peer, f"job {self.job_id[:12]}", self._events_send, offer=self._offer,
                         on_join=self._joined, render_self=render_self)  # fmt: skip
        self._cancelled = False
        self._nursery: trio.Nursery | None = None
        self.first_result_s: float | None = None
        self.started_s = 0.0
        self.units_total = 0
        self.resumed = 0
        self.writer: _ResultWriter | None = None
        self.view: FrameView | None = None  # what the TUI's Frame tab shows of this job
        self._left: Counter[int] = Counter()
        self._written: set[int] = set()  # frames whose files are written (or queued to be)
        self.lease_log: list[tuple[float, str, int]] = []  # (s from the start, peer, units): job.json
        self._t0 = 0.0

    # ------------------------------------------------------------------ running
    async def run(self) -> dict:
        peer, db, spec = self.peer, self.db, self.spec
        self.started_s = time.monotonic()
        settings = spec.settings
        accepted: dict[WorkUnit, UnitRecord] = {}
        gone = []
        for rec in db.results(self.job_id):
            if peer.store.has(rec.chunk):
                accepted[rec.unit] = rec
            else:
                gone.append(rec.unit)
        if gone:
            db.discard_results(self.job_id, gone)
            log.warning("job %s: %d stored results are gone from the store; rendering them again",
                        self.job_id[:12], len(gone))  # fmt: skip
        units = job_units(spec)
        self.units_total = len(units)
        todo = [u for u in units if u not in accepted]
        self._left = Counter(u.frame for u in todo)  # units of each frame not accepted yet
        self.resumed = len(accepted)
        self.backend = await backend_class(peer, spec.backend, self.render_self, f"job {self.job_id[:12]}")
        db.start(self.job_id, now=time.time(), units_total=len(units))
        peer._event(
            "job-started", job=self.job_id, units=len(units), resumed=len(accepted), backend=self.backend
        )
        if todo:
            now = self._t0 = trio.current_time()
            cost = {u: u.pixels * u.samples(settings) for u in todo}
            self.coordinator = Coordinator([(u, cost[u], u.frame) for u in todo], now, config=self.config)
            self.view = FrameView(self.job_id, settings.width, settings.height, settings.pass_count, todo,
                                  exposure=settings.exposure)  # fmt: skip
            peer.frame_views[self.job_id] = self.view
            try:
                await self._run_units(peer, db)
            finally:
                peer.frame_views.pop(self.job_id, None)
            if not self._cancelled:  # the finished frame stays in view until the next job
                self.view.finished = True
                peer.last_view = self.view
        if self._cancelled:
            return self.summary(outputs=[])
        outputs = self._write_outputs()
        db.finish(self.job_id, now=time.time(), outputs=outputs)
        stats = self.coordinator.statistics() if self.coordinator else None
        peer._event("job-done", job=self.job_id, outputs=outputs, units_by_peer=dict(self.units_by_peer),
                    duplicates=stats.duplicates if stats else 0)  # fmt: skip
        return self.summary(outputs)

    async def _run_units(self, peer, db) -> None:
        """Lease the units to the workers until the coordinator is done or the job is cancelled."""
        async with trio.open_nursery() as n:
            self._nursery = n
            self.writer = _ResultWriter(peer.store, db.path, self.job_id, self._store_failed)
            await n.start(self.writer.run)
            self.crew.start(n, lambda: self.coordinator.done or self._cancelled)
            await self._drive()
            self.crew.send_all(JobEnd(reason="cancelled" if self._cancelled else "done"))
            await self.writer.flush()  # every accepted result on disk before the outputs read them
            await self.crew.close(1.0)  # JobEnd goes out before the links close
            n.cancel_scope.cancel()
        self._nursery = None

    def _store_failed(self, exc: BaseException) -> None:
        self._events_send.send_nowait(("store-failed", "", exc))

    def cancel(self) -> None:
        """Stop the job: every worker is told at once (JobEnd) and stops its unit within a second."""
        self._cancelled = True
        self._events_send.send_nowait(("cancel", "", None))

    def summary(self, outputs: list[str]) -> dict:
        stats = self.coordinator.statistics() if self.coordinator else None
        return {
            "job_id": self.job_id,
            "scene_id": self.spec.scene_id,
            "backend": self.backend,
            "cancelled": self._cancelled,
            "outputs": outputs,
            "units_total": self.units_total,
            "units_resumed": self.resumed,
            "units_by_peer": dict(self.units_by_peer),
            "leases": stats.leases if stats else 0,
            "revokes": dict(stats.revokes) if stats else {},
            "duplicates": stats.duplicates if stats else 0,
            "matches": stats.matches if stats else 0,
            "mismatches": stats.mismatches if stats else 0,
            "convictions": dict(stats.convictions) if stats else {},
            "removed": dict(stats.removed) if stats else {},
            "refused": dict(stats.refused) if stats else {},
            "silences": stats.silences if stats else 0,
            "stalls": stats.stalls if stats else 0,
            "rejected": dict(self.crew.rejected),
            "seconds": round(time.monotonic() - self.started_s, 3),
            "first_result_s": None if self.first_result_s is None else round(self.first_result_s, 3),
        }

    # ------------------------------------------------------------------ workers
    def _offer(self) -> JobOffer:
        return JobOffer(job_id=self.job_id, scene_id=self.spec.scene_id, settings=self.spec.settings,
                        backend=self.backend)  # fmt: skip

    def _joined(self, peer_id: str) -> None:
        self.coordinator.add_worker(peer_id, trio.current_time())

    @property
    def workers(self) -> dict:
        return self.crew.workers

    @property
    def rejected(self) -> dict[str, str]:
        return self.crew.rejected

    # ------------------------------------------------------------------ the loop
    async def _drive(self) -> None:
        coord = self.coordinator
        while not coord.done:
            await handle_events(self._events_receive, coord.next_deadline(), self._handle)
            if self._cancelled:
                coord.cancel(trio.current_time())
                return
            self._act(coord.poll(trio.current_time()))

    def _handle(self, kind: str, who: str, payload) -> None:
        coord, now = self.coordinator, trio.current_time()
        if kind == "msg":
            if who not in self.crew.workers:
                return
            if isinstance(payload, Beat):
                coord.on_heartbeat(
                    who,
                    tuple(payload.lease_ids),
                    now,
                    samples_done=payload.samples_done,
                    rendering=payload.rendering,
                )
            elif isinstance(payload, UnitDone):
                self._on_unit(who, payload, now)
            elif isinstance(payload, LeaseRefused):
                coord.on_refuse(who, payload.lease_id, payload.reason, now)
                self.crew.never(who)  # the core gives it no more leases in this job either
                self.peer._event("lease-refused", job=self.job_id, peer=who, reason=payload.reason)
            else:
                self._drop(who, f"sent {type(payload).__name__} on a job link", penalize=True)
        elif kind == "gone":
            self._drop(who, payload, penalize=False)
        elif kind == "store-failed":  # results already stored stay; a rerun resumes from them
            raise JobError(f"job {self.job_id[:12]}: cannot store unit results: {payload}") from payload

    def _drop(self, who: str, reason: str, *, penalize: bool) -> None:
        if not self.crew.drop(who, reason, penalize=penalize):
            return
        self.coordinator.remove_worker(who, trio.current_time(), reason)
        if penalize:
            self.peer._penalize(who, f"job {self.job_id[:12]}: {reason}", ban=False)
        self.peer._event("worker-lost", job=self.job_id, peer=who, reason=reason)

    def _on_unit(self, who: str, msg: UnitDone, now: float) -> None:
        unit = msg.unit
        if unit not in self.coordinator:
            self._drop(who, f"sent a result for a unit not in this job: {unit}", penalize=True)
            return
        try:
            sums = check_result(unit, msg.sample_counts, msg.sums, self.spec.settings)
            check_aov(unit, msg.aov_sums)
        except ValueError as exc:
            self._drop(who, f"sent a malformed result: {exc}", penalize=True)
            return
        chunk = encode_result(unit, msg.sample_counts, msg.sums, msg.aov_sums)
        digest = chunk_hash(chunk)
        verdict = self.coordinator.on_result(who, msg.lease_id, unit, bytes.fromhex(digest), now)
        self.verdicts[verdict.value] += 1
        if verdict is not Verdict.ACCEPT:
            return
        self.writer.put(
            chunk,
            UnitRecord(
                unit=unit, chunk=digest, peer=who, backend=msg.backend, seconds=msg.seconds, at_s=time.time()
            ),
        )
        self.units_by_peer[who] += 1
        self.view.accepted(who, unit, sums, msg.sample_counts)
        self._left[unit.frame] -= 1
        if not self._left[unit.frame]:
            self._frame_complete(unit.frame)
        if self.first_result_s is None:
            self.first_result_s = time.monotonic() - self.started_s
        if self.on_progress is not None:
            self.on_progress(self)

    def _act(self, actions) -> None:
        now = trio.current_time()
        for a in actions:
            if isinstance(a, Lease):
                self.view.leased(a.peer, a.units)
                if len(self.lease_log) < LEASE_LOG_MAX:
                    self.lease_log.append((round(now - self._t0, 4), a.peer, len(a.units)))
                self.crew.grant(a.peer, a.lease_id, a.units, a.deadline, now)
            elif isinstance(a, Revoke):
                self.crew.revoke(a.peer, a.lease_id, a.reason)
            elif isinstance(a, Penalize):
                self.crew.penalize(a.peer, a.reason, job=self.job_id)
                if a.peer in self.coordinator.statistics().convictions:
                    self._drop(a.peer, f"convicted: {a.reason}", penalize=False)
            elif isinstance(a, Discard):
                self.writer.discard(a.units)  # every one of them was accepted from a.peer
                for u in a.units:
                    self._left[u.frame] += 1
                    self._written.discard(u.frame)  # written with a liar's units: again when complete
                self.units_by_peer[a.peer] -= len(a.units)
                self.peer._event("discarded", job=self.job_id, peer=a.peer, units=len(a.units))

    # ------------------------------------------------------------------ results
    def _frame_paths(self, frame: int) -> tuple[Path, Path]:
        stem = results_dir(self.peer.home, self.job_id) / f"frame_{frame:04d}"
        return stem.with_suffix(".exr"), stem.with_suffix(".png")

    def _write_frame(self, store, db: JobDB, frame: int, records: list[UnitRecord] | None = None) -> None:
        """Add up one frame's stored results in canonical order and write its EXR and PNG."""
        spec = self.spec
        if records is None:
            records = [r for r in db.results(self.job_id) if r.unit.frame == frame]
        film = Film(spec.settings, frame)
        film.keep_blocks = False
        for rec in records:
            film.add(decode_result(store.get(rec.chunk), spec.settings))
        if not film.complete:
            raise JobError(f"job {self.job_id[:12]}: frame {frame} is missing units after the schedule ended")
        image = film.image()
        exr, png = self._frame_paths(frame)
        exr.parent.mkdir(parents=True, exist_ok=True)
        write_exr(exr, image)
        write_png(png, image, spec.settings.exposure)
        if spec.settings.denoise:  # the whole frame at once, here (this is the writer's thread)
            from .denoise import denoise_frame

            view, writer = self.view, self.writer

            def show(image) -> None:  # the TUI's preview becomes the denoised frame
                if view is not None and writer is not None:
                    writer.notify(view.show_final, frame, image)

            den = denoise_frame(film, exr, spec.settings.exposure, on_image=show)
            if "error" in den:
                log.warning("job %s frame %d: no denoised image: %s", self.job_id[:12], frame, den["error"])
            else:
                log.info("job %s frame %d denoised (features: %s) in %.2f s", self.job_id[:12], frame,
                         den["features"], den["seconds"])  # fmt: skip

    def _frame_complete(self, frame: int) -> None:
        """Every unit of `frame` is accepted: its files are written now, by the result writer (after
        the results it has queued), not at the end of the job: an animation's frames appear as
        they finish. The frame-done event comes once the files are there."""
        self._written.add(frame)
        path = str(self._frame_paths(frame)[0])

        def written() -> None:
            self.peer._event("frame-done", job=self.job_id, frame=frame, path=path)

        def write(store, db) -> None:
            self._write_frame(store, db, frame)
            self.writer.notify(written)

        self.writer.call(write)

    def _write_outputs(self) -> list[str]:
        spec, store = self.spec, self.peer.store
        by_frame: dict[int, list[UnitRecord]] = {}
        for rec in self.db.results(self.job_id):
            by_frame.setdefault(rec.unit.frame, []).append(rec)
        out = results_dir(self.peer.home, self.job_id)
        out.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        for frame in range(spec.first_frame, spec.last_frame + 1):
            if frame not in self._written:  # finished before a restart, say
                self._write_frame(store, self.db, frame, by_frame.get(frame, []))
            written += [str(p) for p in self._frame_paths(frame)]
            exr = self._frame_paths(frame)[0]
            denoised = (denoised_path(exr, ".exr"), denoised_path(exr, ".png"))
            written += [str(p) for p in denoised if p.exists()]
        record = self.db.get(self.job_id)
        provenance = job_provenance(
            self.job_id, spec, backend_class=self.backend, coordinator=self.peer.peer_id,
            submitted_s=record.submitted_s, started_s=record.started_s,
            results=[r for recs in by_frame.values() for r in recs], outputs=written,
            lease_log=self.lease_log, finished_s=time.time(),
        )  # fmt: skip
        write_json(out / "job.json", provenance)
        return written + [str(out / "job.json")]


def job_provenance(job_id: str, spec: JobSpec, *, backend_class: str, coordinator: str,
                   submitted_s: float, started_s: float | None, results: list[UnitRecord],
                   outputs: list[str], lease_log: list[tuple[float, str, int]],
                   finished_s: float) -> dict:  # fmt: skip
    """What `job.json` holds (`meshrender.timeline` reads it back). Times: `submitted_s`,
    `started_s` (kept by a resume), `finished_s` and each unit's `at_s` (when the coordinator
    accepted it) are wall-clock epoch seconds; a unit's `seconds` is its render time as its worker
    measured it; a lease's `t_s` is seconds from when this run of the coordinator began leasing."""
    return {
        "job_id": job_id,
        "scene_id": spec.scene_id,
        "settings": msgspec.to_builtins(spec.settings),
        "frames": [spec.first_frame, spec.last_frame],
        "backend_class": backend_class,
        "coordinator": coordinator,
        "submitted_s": submitted_s,
        "started_s": started_s,
        "finished_s": finished_s,
        "units_by_peer": dict(Counter(r.peer for r in results)),
        "units": [
            {
                **msgspec.to_builtins(r.unit),
                "peer": r.peer,
                "backend": r.backend,
                "seconds": round(r.seconds, 4),
                "at_s": round(r.at_s, 3),
                "chunk": r.chunk,
            }  # fmt: skip
            for r in results
        ],
        "outputs": outputs,
        "leases": [{"t_s": t, "peer": p, "units": n} for t, p, n in lease_log],
    }
