"""A chaos run: a queue of jobs on a 4-peer loopback party while a seeded driver kills, freezes and
restarts peers (the coordinator, whose queue holds the jobs, included) at random moments.

`Chaos` starts real `meshrender peer --headless` processes on 127.0.0.1 with fixed ports (a peer
restarted on its home keeps its identity and its address, and dials every other peer), queues the
jobs on peer 0 with `meshrender submit` once every renderer is up (some as the driver starts, the
rest while the faults go on), and picks, with `random.Random(seed)`, when the next fault comes,
which peer it hits and what it is, until `faults` have landed, `chaos_s` have passed or the queue is
empty:

  * kill    SIGKILL, started again on its home after a random pause (kill -9, then a restart);
  * stop    SIGSTOP, SIGCONT after a random pause (a laptop lid closed, a swap storm);
  * restart SIGTERM, started again as soon as it has exited (an upgrade, a reboot).

A fault only hits a peer that is up with its renderer ready (the first fault of a run kills the
coordinator while it runs a job), and at most `DOWN_MAX` peers are down or starting at once, so
the party makes progress between faults. Then every peer is healed and the queue
must drain.
What must hold afterwards (`check`): every job is done; its result rows are exactly its units,
once each, and so is its `job.json`; the run that finished it accepted each unit once (`resumed`
plus accepted equals the total); every image is bit-identical to a one-process render of the job's
own spec on the scene in the coordinator's store; no peer exited on its own; nothing is left
leased (every worker ended its last job link, every member reads idle, no job is running).

The schedule of faults is the seed's; when they land against the peers' timing is not, so a
replay hits the same peers in the same order at the same offsets, not always the same code path.
A failing run names its seed: `MESHRENDER_CHAOS_SEED=N pytest tests/test_chaos.py` replays it.
`bench/chaos.py` runs the same driver for longer, with more faults and jobs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
PARTY, SECRET = "chaos-party", "chaos party secret, long enough for anybody"
PEER_ARGS = ("--threads", "1", "--backend", "cpu")
DOWN_MAX = 2  # peers killed, frozen or restarting at once: the other two keep the party going
START_S = 60.0  # a peer prints `listening` within this (a cold interpreter on a busy machine)
TERM_S = 10.0  # a SIGTERM'd peer exits within this, or it is killed
DRAIN_S = 240.0  # after the faults stop, the queue drains within this
SETTLE_S = 20.0  # after the last job is done, every worker lets go of its links within this

# what the suite's run queues: about 250 units, about 15 s of work for 4 one-thread peers
TEST_JOBS: tuple[tuple[str, ...], ...] = (
    ("cornell", "--res", "64x64", "--spp", "16", "--pass-spp", "4", "--tile", "16", "--seed", "1"),
    ("cornell", "--res", "48x48", "--spp", "16", "--pass-spp", "4", "--tile", "16", "--seed", "2"),
    ("cornell_orbit", "--res", "32x32", "--spp", "8", "--pass-spp", "4", "--tile", "16", "--frames", "0..2"),
    ("cornell", "--res", "32x32", "--spp", "32", "--pass-spp", "8", "--tile", "16", "--seed", "3"),
    ("cornell", "--res", "64x64", "--spp", "8", "--pass-spp", "4", "--tile", "32", "--seed", "5")
    + ("--priority", "2"),
    ("cornell", "--res", "64x64", "--spp", "24", "--pass-spp", "4", "--tile", "16", "--seed", "6"),
)
COMMON = ("--max-depth", "4")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChaosPeer:
    """One peer's home and port, and the processes run on them one after another (incarnations).
    Every incarnation's JSON events are kept, tagged with its number; stderr goes to a log file."""

    def __init__(self, index: int, root: Path):
        self.index = index
        self.home = root / f"p{index}"
        self.logs = root / "logs"
        self.port = free_port()
        self.peer_id = ""
        self.proc: subprocess.Popen | None = None
        self.incarnation = -1
        self.stopped = False  # SIGSTOP'd
        self.expected_exit = True  # we ended it (or it never ran): an exit is no surprise
        self.surprises: list[str] = []  # exits nobody asked for, with their stderr's tail
        self.events: list[dict] = []
        self._lock = threading.Lock()

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    def start(self, bootstrap: list[str]) -> None:
        self.incarnation += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        party = ("--party", PARTY, "--secret", SECRET, "--home", str(self.home), *PEER_ARGS)
        listen = ("--listen", f"/ip4/127.0.0.1/tcp/{self.port}")
        cmd = [sys.executable, "-m", "meshrender", "peer", "--headless", "--json", *party, *listen]
        for b in bootstrap:
            cmd += ["--bootstrap", b]
        self.err_path = self.logs / f"p{self.index}.{self.incarnation}.err"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.stopped, self.expected_exit = False, False
        threading.Thread(target=self._read, args=(self.proc, self.incarnation), daemon=True).start()

    def _read(self, proc: subprocess.Popen, incarnation: int) -> None:
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            ev["incarnation"] = incarnation
            with self._lock:
                self.events.append(ev)

    def wait_listening(self, timeout: float = START_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.of("listening", incarnation=self.incarnation):
                self.peer_id = ev["peer_id"]
                return
            if not self.alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"peer {self.index} did not start: {self.stderr_tail()}")

    def of(self, kind: str, **match) -> list[dict]:
        with self._lock:
            return [
                e for e in self.events if e["event"] == kind and all(e.get(k) == v for k, v in match.items())
            ]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def up(self) -> bool:
        """Running and not frozen."""
        return self.alive() and not self.stopped

    def ready(self) -> bool:
        """Up, and its renderer has started in this incarnation: it takes leases."""
        return self.up() and bool(self.of("renderer", incarnation=self.incarnation))

    def running_job(self) -> bool:
        """Up and coordinating a job it started in this incarnation."""
        if not self.up():
            return False
        started = {e["job"] for e in self.of("job-started", incarnation=self.incarnation)}
        ended = {
            e["job"] for k in ("job-done", "job-failed") for e in self.of(k, incarnation=self.incarnation)
        }
        return bool(started - ended)

    def signal(self, sig: int) -> None:
        if self.alive():
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.expected_exit = True
            self.proc.send_signal(sig)
        self.stopped = sig == signal.SIGSTOP or (self.stopped and sig != signal.SIGCONT)

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            return Path(self.err_path).read_text(errors="replace")[-chars:]
        except (OSError, AttributeError):
            return ""

    def note_exit(self) -> None:
        """Called when its process is found gone: an exit nobody asked for is a finding."""
        if not self.expected_exit:
            self.expected_exit = True
            self.surprises.append(
                f"peer {self.index} #{self.incarnation} exited {self.proc.returncode}: "
                f"{self.stderr_tail(1500)}"
            )

    def shut(self) -> None:
        if self.proc is None:
            return
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(TERM_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclasses.dataclass
class Report:
    seed: int
    faults: Counter = dataclasses.field(default_factory=Counter)  # (kind, "coordinator"|"member")
    schedule: list[tuple[float, str, int]] = dataclasses.field(default_factory=list)  # (t_s, kind, peer)
    jobs: dict[str, dict] = dataclasses.field(default_factory=dict)  # id -> {"args", "state", ...}
    coordinator_mid_job: int = 0  # faults that hit the coordinator while it ran a job
    chaos_s: float = 0.0
    drain_s: float = 0.0
    wall_s: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)

    def figures(self) -> dict:
        units = sum(j.get("units_total", 0) for j in self.jobs.values())
        return {
            "seed": self.seed,
            "faults": sum(self.faults.values()),
            "faults_by_kind": {f"{k}/{who}": n for (k, who), n in sorted(self.faults.items())},
            "coordinator_faults_mid_job": self.coordinator_mid_job,
            "jobs": len(self.jobs),
            "jobs_done": sum(j.get("state") == "done" for j in self.jobs.values()),
            "units": units,
            "units_accepted": sum(j.get("rows", 0) for j in self.jobs.values()),
            "double_accepted": sum(j.get("double", 0) for j in self.jobs.values()),
            "lost": sum(j.get("missing", 0) for j in self.jobs.values()),
            "units_leased": sum(j.get("leased", 0) for j in self.jobs.values()),
            "re_leased": sum(
                max(0, j.get("leased", 0) - j.get("units_total", 0)) for j in self.jobs.values()
            ),
            "duplicates": sum(j.get("duplicates", 0) for j in self.jobs.values()),
            "coordinator_runs": sum(j.get("runs", 0) for j in self.jobs.values()),
            "chaos_s": round(self.chaos_s, 1),
            "drain_s": round(self.drain_s, 1),
            "wall_s": round(self.wall_s, 1),
            "problems": len(self.problems),
        }


class Chaos:
    """The party, the queue and the seeded fault driver (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        seed: int,
        *,
        peers: int = 4,
        chaos_s: float = 60.0,
        faults: int = 10,
        gap_s: tuple[float, float] = (0.5, 2.0),
        pause_s: tuple[float, float] = (0.3, 3.5),
        coordinator_share: float = 0.35,
        jobs=TEST_JOBS,
        submit_during: int = 2,
    ):
        self.root = Path(root)
        self.rng = random.Random(seed)
        self.report = Report(seed=seed)
        self.peers = [ChaosPeer(i, self.root) for i in range(peers)]
        self.chaos_s, self.gap_s, self.pause_s = chaos_s, gap_s, pause_s
        self.faults_target = faults  # they end after this many, after chaos_s, or once the queue is empty
        self.coordinator_share = coordinator_share
        self.jobs = list(jobs)
        self.submit_during = min(submit_during, len(self.jobs))  # queued while the faults go on
        self._pending: list[tuple[float, str, ChaosPeer]] = []  # (due, "start"|"cont"|"respawn", peer)
        self._submit_threads: list[threading.Thread] = []
        self._submit_errors: list[str] = []

    @property
    def coordinator(self) -> ChaosPeer:
        return self.peers[0]

    def bootstrap_of(self, p: ChaosPeer) -> list[str]:
        return [q.addr for q in self.peers if q is not p and q.peer_id]

    # ------------------------------------------------------------------ the queue
    def submit(self, args: tuple[str, ...]) -> None:
        scene, rest = args[0], args[1:]
        home = str(self.coordinator.home)
        cmd = [sys.executable, "-m", "meshrender", "submit", scene, "--json", *COMMON, *rest, "--home", home]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            self._submit_errors.append(f"submit {' '.join(args)}: {r.stderr[-1500:]}")
            return
        self.report.jobs[json.loads(r.stdout)["id"]] = {"args": " ".join(args)}

    def submit_later(self, *jobs: tuple[str, ...]) -> None:
        """Queue `jobs`, in their order, from a thread: the driver goes on watching meanwhile."""
        t = threading.Thread(target=lambda: [self.submit(args) for args in jobs], daemon=True)
        t.start()
        self._submit_threads.append(t)

    # ------------------------------------------------------------------ the run
    def run(self) -> Report:
        t0 = time.monotonic()
        try:
            self._start_party()
            self._drive()
            self._heal()
            t1 = time.monotonic()
            self._drain()
            self.report.drain_s = time.monotonic() - t1
            self._settle()
            self.check()
        finally:
            self.report.wall_s = time.monotonic() - t0
            for p in self.peers:
                p.shut()
                if p.surprises:
                    self.report.problems += p.surprises
        return self.report

    def _start_party(self) -> None:
        for p in self.peers:  # one after another: each dials the ones before it
            p.start(self.bootstrap_of(p))
            p.wait_listening()
        c = self.coordinator
        deadline = time.monotonic() + 2 * START_S  # a renderer's first start compiles or loads kernels
        while len({e["peer"] for e in c.of("peer-joined")}) < len(self.peers) - 1 or not all(
            p.ready() for p in self.peers
        ):
            assert time.monotonic() < deadline, f"the party did not form: {c.events[-10:]}"
            time.sleep(0.1)

    def _due(self, now: float) -> None:
        """Carry out the recoveries that are due: SIGCONT, a restart after a kill or a SIGTERM."""
        keep = []
        for due, what, p in self._pending:
            if due > now:
                keep.append((due, what, p))
            elif what == "cont":
                p.signal(signal.SIGCONT)
            elif what == "respawn" and p.alive():  # a SIGTERM'd peer is still shutting down
                if now - due > TERM_S:
                    p.signal(signal.SIGKILL)
                keep.append((due, what, p))
            else:
                if p.alive():
                    p.signal(signal.SIGKILL)
                    p.proc.wait()
                p.start(self.bootstrap_of(p))
        self._pending = keep

    def _watch_exits(self) -> None:
        for p in self.peers:
            if p.proc is not None and not p.alive() and not p.expected_exit:
                p.note_exit()
                self._pending.append((time.monotonic() + 1.0, "start", p))  # and carry on

    def _fault(self, now: float) -> None:
        rng = self.rng
        # every draw happens whatever the party's state, so a seed's schedule does not depend on it
        kind = rng.choices(("kill", "stop", "restart"), weights=(0.45, 0.35, 0.2))[0]
        coordinator = rng.random() < self.coordinator_share
        member = rng.randrange(1, len(self.peers))
        pause = rng.uniform(*self.pause_s)
        if not self.report.faults[("kill", "coordinator")]:
            return  # the slots before the first fault (`_first_kill`) pass
        victim = self.coordinator if coordinator else self.peers[member]
        # a fault hits a peer that is up with its renderer ready, and at most DOWN_MAX are down or
        # still starting: the party makes progress between faults
        if not victim.ready() or sum(not p.ready() for p in self.peers) >= DOWN_MAX:
            return  # this slot passes
        self._land(now, kind, victim, pause)

    def _first_kill(self, now: float, pause: float) -> None:
        """Every run's first fault: the coordinator killed while it runs a job. Looked for at every
        turn of the driver, not only at a fault's slot: on a fast machine a small job can start and
        end between two slots."""
        c = self.coordinator
        if self.report.faults[("kill", "coordinator")] or not (c.ready() and c.running_job()):
            return
        self._land(now, "kill", c, pause)

    def _land(self, now: float, kind: str, victim: ChaosPeer, pause: float) -> None:
        coordinator = victim is self.coordinator
        self.report.faults[(kind, "coordinator" if coordinator else "member")] += 1
        self.report.coordinator_mid_job += coordinator and victim.running_job()
        self.report.schedule.append((round(now - self._t0, 2), kind, victim.index))
        if kind == "kill":
            victim.signal(signal.SIGKILL)
            self._pending.append((now + pause, "start", victim))
        elif kind == "stop":
            victim.signal(signal.SIGSTOP)
            self._pending.append((now + pause, "cont", victim))
        else:
            victim.signal(signal.SIGTERM)
            self._pending.append((now, "respawn", victim))

    def _drive(self) -> None:
        rng = self.rng
        self._t0 = now = time.monotonic()
        end = now + self.chaos_s
        later = self.jobs[len(self.jobs) - self.submit_during :]
        submits = sorted(rng.uniform(0, self.chaos_s * 0.3) for _ in later)
        first_pause = rng.uniform(*self.pause_s)
        next_fault = now + rng.uniform(*self.gap_s)
        next_look = now
        self.submit_later(*self.jobs[: len(self.jobs) - self.submit_during])  # queued as the driver starts
        while now < end and sum(self.report.faults.values()) < self.faults_target:
            if not later and now >= next_look:  # everything queued: stop once the queue is empty
                next_look = now + 1.0
                if self._drained() is None:
                    break
            self._watch_exits()
            self._due(now)
            while submits and now - self._t0 >= submits[0]:
                submits.pop(0)
                self.submit_later(later.pop(0))
            self._first_kill(now, first_pause)
            if now >= next_fault:  # the slots keep the seed's times whenever the first kill lands
                self._fault(now)
                next_fault = now + rng.uniform(*self.gap_s)
            time.sleep(0.05)
            now = time.monotonic()
        if later:
            self.submit_later(*later)
        self.report.chaos_s = time.monotonic() - self._t0

    def _heal(self) -> None:
        deadline = time.monotonic() + TERM_S + START_S
        while self._pending and time.monotonic() < deadline:
            self._pending = [(0.0, what, p) for _, what, p in self._pending]
            self._due(time.monotonic())
            time.sleep(0.05)
        for t in self._submit_threads:
            t.join(120)
        self.report.problems += self._submit_errors
        for p in self.peers:
            if not p.alive():
                p.start(self.bootstrap_of(p))
            p.signal(signal.SIGCONT)

    def _db(self):
        from meshrender.jobs import JobDB

        return JobDB(self.coordinator.home / "jobs.sqlite")

    def _drained(self) -> dict[str, str] | None:
        """None once every submitted job has finished; else each job's state."""
        with self._db() as db:
            states = {r.id: r.state for r in db.list()}
        submitting = any(t.is_alive() for t in self._submit_threads)
        if not submitting and all(states.get(j) in ("done", "failed", "cancelled") for j in self.report.jobs):
            return None
        return states

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            self._watch_exits()
            self._due(time.monotonic())
            states = self._drained()
            if states is None:
                return
            time.sleep(0.5)
        self.report.problems.append(f"the queue did not drain within {DRAIN_S:.0f} s: {states}")

    def _settle(self) -> None:
        """Wait until nothing is left leased: every worker ended its last job link and every member
        reads idle to the coordinator."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            held = self._still_leased()
            if not held or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        self.report.problems += held

    def _still_leased(self) -> list[str]:
        c, problems = self.coordinator, []
        for p in self.peers:
            if not p.peer_id:
                continue
            with p._lock:
                mine = [e for e in p.events if e["incarnation"] == p.incarnation]
            last_lease = max((e["t"] for e in mine if e["event"] == "lease"), default=None)
            served = [e["t"] for e in mine if e["event"] == "job-served"]
            if p is not c and last_lease is not None and not any(t >= last_lease for t in served):
                problems.append(f"peer {p.index} still holds a job link after its last lease")
        statuses = {}
        for e in c.of("peer-status", incarnation=c.incarnation):
            statuses[e["peer"]] = e["state"]
        busy = [q.index for q in self.peers[1:] if statuses.get(q.peer_id, "idle") != "idle"]
        if busy:
            problems.append(f"peers {busy} still read busy to the coordinator")
        return problems

    # ------------------------------------------------------------------ what must hold
    def check(self, reference=None) -> None:
        """Fill the report's per-job figures and problems (see the module docstring)."""
        from meshrender.coordinate import job_units
        from meshrender.jobs import _unit_key

        rep, c = self.report, self.coordinator
        leased: Counter[str] = Counter()
        for p in self.peers:
            for e in p.of("lease", coordinator=c.peer_id):
                leased[e["job"]] += e["units"]
        with self._db() as db:
            records = {r.id: r for r in db.list()}
            for jid, info in rep.jobs.items():
                rec = records.get(jid)
                if rec is None:
                    rep.problems.append(f"job {jid[:12]} ({info['args']}) is not in the queue")
                    continue
                units = job_units(rec.spec)
                rows = db.results(jid)
                keys = Counter(_unit_key(r.unit) for r in rows)
                want = {_unit_key(u) for u in units}
                info.update(
                    state=rec.state,
                    units_total=len(units),
                    rows=len(rows),
                    leased=leased[jid],
                    missing=len(want - set(keys)),
                    double=sum(n - 1 for n in keys.values()),
                )
                label = f"job {jid[:12]} ({info['args']})"
                if rec.state != "done":
                    rep.problems.append(f"{label} is {rec.state}: {rec.error}")
                    continue
                if set(keys) != want or len(rows) != len(units) or rec.units_done != len(units):
                    rep.problems.append(
                        f"{label}: {len(rows)} result rows for {len(units)} units, "
                        f"{info['missing']} missing, {len(set(keys) - want)} not its own"
                    )
                self._check_runs(jid, info, label)
                self._check_provenance(jid, rec, rows, label)

    def _check_runs(self, jid: str, info: dict, label: str) -> None:
        """The coordinator run that finished the job accepted each unit it did not resume once."""
        c, rep = self.coordinator, self.report
        info["runs"] = len(c.of("job-started", job=jid))
        done = c.of("job-done", job=jid)
        if not done:  # killed between committing `done` and printing the event: the rows tell
            return
        if len(done) > 1:
            rep.problems.append(f"{label}: finished {len(done)} times")
            return
        started = c.of("job-started", job=jid, incarnation=done[0]["incarnation"])
        if not started:
            rep.problems.append(f"{label}: done by a run that never started")
            return
        accepted = sum(done[0]["units_by_peer"].values())
        info["duplicates"] = done[0].get("duplicates", 0)
        if started[-1]["resumed"] + accepted != info["units_total"]:
            rep.problems.append(
                f"{label}: the last run resumed {started[-1]['resumed']} and accepted "
                f"{accepted} of {info['units_total']} units"
            )

    def _check_provenance(self, jid: str, rec, rows, label: str) -> None:
        rep = self.report
        out = self.coordinator.home / "results" / jid
        try:
            prov = json.loads((out / "job.json").read_text())
        except (OSError, ValueError) as exc:
            rep.problems.append(f"{label}: no readable job.json: {exc}")
            return
        listed = Counter((u["frame"], u["pass_index"], u["y0"], u["x0"]) for u in prov["units"])
        if len(prov["units"]) != len(rows) or any(n > 1 for n in listed.values()):
            rep.problems.append(
                f"{label}: job.json lists {len(prov['units'])} units "
                f"({sum(n > 1 for n in listed.values())} twice) for {len(rows)} results"
            )
        if sorted(u["chunk"] for u in prov["units"]) != sorted(r.chunk for r in rows):
            rep.problems.append(f"{label}: job.json's unit chunks differ from the queue's")
        for path in rec.outputs:
            if not Path(path).is_file():
                rep.problems.append(f"{label}: output {path} is missing")

    def compare_images(self, renderer_for) -> None:
        """Every frame of every done job bit for bit against a one-process render of the job's own
        spec, on the scene as the coordinator's store holds it. `renderer_for(scene)` gives a
        Renderer (the test session's, or a fresh one in the bench)."""
        from meshrender.output import read_exr
        from meshrender.render import render_frame
        from meshrender.store.chunkstore import ChunkStore
        from meshrender.store.scenes import load_compiled

        scenes = {}
        with self._db() as db, ChunkStore(self.coordinator.home / "store") as store:
            for jid, info in self.report.jobs.items():
                if info.get("state") != "done":
                    continue
                rec = db.get(jid)
                sid = rec.spec.scene_id
                if sid not in scenes:
                    scenes[sid] = load_compiled(store, sid)
                r = renderer_for(scenes[sid])
                for f in range(rec.spec.first_frame, rec.spec.last_frame + 1):
                    mine = read_exr(self.coordinator.home / "results" / jid / f"frame_{f:04d}.exr")
                    local = render_frame(r, rec.spec.settings, frame=f).image()
                    same = mine.shape == local.shape and np.array_equal(
                        mine.view(np.uint32), local.view(np.uint32)
                    )
                    info.setdefault("frames_identical", 0)
                    info["frames_identical"] += same
                    if not same:
                        self.report.problems.append(
                            f"job {jid[:12]} ({info['args']}) frame {f}: not bit-identical to a local render"
                        )


def _other_process(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_a_second_queue_opened_in_one_process_leaves_the_first_its_locks(tmp_path):
    """Found by the chaos run: the coordinator's result writer opens a second JobDB in the peer's
    process. Its header check used to close a descriptor of the file, dropping the peer's SQLite
    locks; a `meshrender jobs` in another process then took the file for unused and deleted the
    WAL: the peer's later commits were lost and the queue read as malformed."""
    from meshrender.jobs import JobDB, JobSpec
    from meshrender.settings import RenderSettings
    from meshrender.store.chunkstore import ChunkStore
    from meshrender.store.hashing import chunk_hash

    path = tmp_path / "jobs.sqlite"
    with JobDB(path) as peer:
        rec, _ = peer.submit(JobSpec(scene_id="0" * 64, settings=RenderSettings()), now=1.0)
        JobDB(path).close()  # what the result writer does
        _other_process(f"from meshrender.jobs import JobDB; JobDB({str(path)!r}).list()")
        peer.start(rec.id, now=2.0, units_total=1)
        seen = _other_process(
            f"from meshrender.jobs import JobDB; print(JobDB({str(path)!r}).list()[0].state)"
        )
        assert seen == "running" and peer.get(rec.id).state == "running"
    root = tmp_path / "store"
    with ChunkStore(root) as store:
        ChunkStore(root).close()
        _other_process(
            f"from meshrender.store.chunkstore import ChunkStore; ChunkStore({str(root)!r}).close()"
        )
        blob = b"a chunk written after the other process came and went"
        store.put(blob)
        code = (
            "from meshrender.store.chunkstore import ChunkStore; "
            f"print(ChunkStore({str(root)!r}).has({chunk_hash(blob)!r}))"
        )
        assert _other_process(code) == "True" and store.get(chunk_hash(blob)) == blob


def chaos_seed() -> int:
    env = os.environ.get("MESHRENDER_CHAOS_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 31)


@pytest.mark.slow
def test_a_party_under_kills_freezes_and_restarts_finishes_every_job_exactly(tmp_path, renderer_for):
    seed = chaos_seed()
    replay = f"seed {seed} (replay: MESHRENDER_CHAOS_SEED={seed} pytest tests/test_chaos.py)"
    chaos = Chaos(tmp_path, seed)
    try:
        report = chaos.run()
    except AssertionError as exc:  # the party did not start: still name the seed
        raise AssertionError(f"{replay}: {exc}") from exc
    chaos.compare_images(renderer_for)
    figures = report.figures()
    print(f"chaos {replay}: {json.dumps(figures)}")
    assert not report.problems, f"{replay}:\n" + "\n".join(report.problems) + f"\nfaults {report.schedule}"
    assert figures["faults"] >= 3, f"{replay}: only {figures['faults']} faults landed: {report.schedule}"
    assert report.faults[("kill", "coordinator")] >= 1, f"{replay}: the coordinator was never killed"
    assert figures["jobs_done"] == len(TEST_JOBS) and figures["lost"] == 0 and figures["double_accepted"] == 0
