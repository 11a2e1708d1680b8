"""Rendering one frame on the party from the command line (`meshrender render SCENE --party ...`)
and the demo party (`meshrender demo`).

The command runs a peer of its own (the one in `--home`), imports the scene into its store, joins
the party through `--bootstrap` (or mDNS), puts the job on its own queue and coordinates it:
every member that renders takes leases, and so does this peer. The job's id is the hash of its
content, so running the same command again after a crash resumes the job: units already returned
are not rendered again; a finished job is not rendered again at all.

No wait is silent. `watch_job` runs beside a job: when no unit has been accepted for
STALL_NOTICE_S it tells the user (one line) which peers hold which units and why the others hold
none (renderer starting or compiling kernels, fetching the scene, a failed link), then again every
STALL_NOTICE_S; the job goes on with whoever renders. After JOB_STALL_MAX_S without a unit and
without a renderer still starting (a start has bounds of its own), or NOBODY_MAX_S with nobody who
could ever render, it fails with that line as the reason (`JobStalled`). The decisions are the
sans-IO `StallWatch` (fed `now`); `watch_progress` does the same for a fetch or a request.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import trio

from .errors import MeshrenderError

log = logging.getLogger("meshrender.distributed")

JOIN_TIMEOUT_S = 60.0  # no bootstrap peer let us in within this: give up (a loaded peer may take 30 s)
MEMBERS_WAIT_S = 10.0  # once one let us in, wait this long at most for the rest of `wait_members`
MESH_SETTLE_S = 3.0  # then wait this long at most for the members they named
DEMO_START_TIMEOUT_S = 180.0  # a demo peer prints its address within this (imports on a loaded machine)
DEMO_PARTY = "demo"
STALL_NOTICE_S = 20.0  # no unit accepted (no byte fetched) for this long: the user is told who holds what
JOB_STALL_MAX_S = 900.0  # no unit for this long, and no renderer still starting: the job fails
NOBODY_MAX_S = 180.0  # no worker, and no member whose renderer may still come up, this long: it fails
WATCH_POLL_S = 1.0  # how often the watchers look
WAITING_RENDERER = ("starting", "compiling", "stopped")  # renderer states that will (likely) end in ready


class PartyError(MeshrenderError):
    pass


class JobStalled(PartyError):
    """A job made no progress within the bounds; the message says who held what and why."""


class StallWatch:
    """When to tell the user a job is stuck, and when to give up on it; no clock, no I/O.

    `observe(now, done, warming=, can_render=)` each poll: `done` counts accepted units, `warming`
    says some renderer is still starting (its own bounds apply), `can_render` that some worker
    holds the job or may yet join it. Returns "" (nothing to say), "notice" (at most every
    `quiet_s` while nothing is accepted) or "give-up"."""

    def __init__(self, now: float, *, quiet_s: float = STALL_NOTICE_S, max_s: float = JOB_STALL_MAX_S,
                 nobody_max_s: float = NOBODY_MAX_S):  # fmt: skip
        self.quiet_s, self.max_s, self.nobody_max_s = quiet_s, max_s, nobody_max_s
        self.done = -1
        self.progress_at = self._notice_at = self._bound_at = self._somebody_at = now

    def quiet_for(self, now: float) -> float:
        return now - self.progress_at

    def observe(self, now: float, done: int, *, warming: bool, can_render: bool) -> str:
        if done != self.done:
            self.done = done
            self.progress_at = self._notice_at = self._bound_at = self._somebody_at = now
            return ""
        if warming:
            self._bound_at = now
        if can_render or warming:
            self._somebody_at = now
        if now - self._bound_at >= self.max_s or now - self._somebody_at >= self.nobody_max_s:
            return "give-up"
        if now - self._notice_at >= self.quiet_s:
            self._notice_at = now
            return "notice"
        return ""


def _short(peer_id: str) -> str:
    return peer_id[-8:]


def _units(n: int) -> str:
    return f"{n} unit" if n == 1 else f"{n} units"


def job_picture(run, peer) -> tuple[str, bool, bool]:
    """Who holds which units of `run` and why the others hold none, in one line; whether some
    renderer is still starting; whether anyone can render the job now or may join it."""
    from .crew import RENDERER_NOT_READY

    held = run.coordinator.units_held() if run.coordinator is not None else {}
    parts: list[str] = []
    warming = can_render = False
    me = peer.peer_id
    if run.render_self and peer.rendering.proc is not None:
        r = peer.rendering.proc
        if r.running():
            can_render = True
            why = "rendering" if held.get(me) else "waiting for a lease" if me in run.workers else "joining"
        else:
            warming = warming or r.state in WAITING_RENDERER or r.state == "failed"
            why = r.note or f"renderer {r.state}"
        parts.append(f"this peer: {_units(held.get(me, 0))}, {why}")
    for member in sorted(peer.members):
        status = peer.statuses.get(member)
        if status is not None and not status.get("renders", True):
            continue  # a client (`store fetch`, `submit`): not a renderer
        n = held.get(member, 0)
        renderer = (status or {}).get("renderer", "")
        if member in run.workers:
            can_render = True
            why = "rendering" if n else "waiting for a lease"
            if status is not None and status.get("activity") == "fetching":
                why = "fetching the scene"
            elif renderer in RENDERER_NOT_READY:  # offered before its status said so: it is closing
                warming = warming or renderer != "failed"
                why = status.get("renderer_note") or f"renderer {renderer}"
        elif status is None:
            why, can_render = "no status heard yet", True
        elif renderer in RENDERER_NOT_READY:
            warming = warming or renderer != "failed"
            can_render = True  # it restarts: the job is offered to it once it is ready
            why = status.get("renderer_note") or f"renderer {renderer}"
        elif member in run.rejected:
            why, can_render = f"out of the job: {run.rejected[member]}", True
        else:
            why, can_render = "being offered the job", True
        parts.append(f"{_short(member)}: {_units(n)}, {why}")
    if not parts:
        parts.append("no member and no renderer of our own")
    return "; ".join(parts), warming, can_render


async def watch_job(run, peer, *, on_notice, watch: StallWatch | None = None) -> None:
    """Beside `run.run()`: tell `on_notice(line, picture)` when the job is stuck, raise JobStalled
    when it stays stuck past the bounds. Returns never (cancel it when the job ends)."""
    watch = watch or StallWatch(trio.current_time())
    while True:
        await trio.sleep(WATCH_POLL_S)
        now = trio.current_time()
        done = run.resumed + sum(run.units_by_peer.values())
        picture, warming, can_render = job_picture(run, peer)
        verdict = watch.observe(now, done, warming=warming, can_render=can_render)
        if not verdict:
            continue
        total = run.units_total or "?"
        line = f"no unit finished for {watch.quiet_for(now):.0f} s ({done}/{total} done): {picture}"
        if verdict == "give-up":
            raise JobStalled(f"job {run.job_id[:12]} made no progress: {line}")
        on_notice(line, picture)


async def watch_progress(probe, *, on_notice, quiet_s: float = STALL_NOTICE_S) -> None:
    """Beside a wait that has bounds of its own (a fetch, a request): `probe()` returns (a value that
    changes with progress, a line saying where things stand); `on_notice(line)` hears that line
    when the value has not changed for `quiet_s`, and again every `quiet_s`. Returns never."""
    watch = StallWatch(trio.current_time(), quiet_s=quiet_s, max_s=float("inf"), nobody_max_s=float("inf"))
    tokens: dict = {}
    while True:
        await trio.sleep(WATCH_POLL_S)
        now = trio.current_time()
        token, line = probe()
        done = tokens.setdefault(token, len(tokens))  # each new value counts as progress
        if watch.observe(now, done, warming=False, can_render=True) == "notice":
            on_notice(f"{line} (nothing new for {watch.quiet_for(now):.0f} s)")


def notice_printer(json_lines: bool):
    """The CLI's `on_notice`: one line on stderr (a JSON object with --json)."""

    def say(line: str, picture: str = "") -> None:
        if json_lines:
            print(json.dumps({"event": "stalled", "message": line}), file=sys.stderr, flush=True)
        else:
            print(f"meshrender: {line}", file=sys.stderr, flush=True)

    return say


def jobs_db_path(home: Path) -> Path:
    return Path(home) / "jobs.sqlite"


async def join_party(peer, *, bootstrap: list[str], wait_members: int = 1, on_notice=None) -> None:
    """Wait until a bootstrap peer let us in (or refused), then for the members it named. Every
    STALL_NOTICE_S without a member, `on_notice(line)` hears why (the latest failed dial)."""
    say = on_notice or (lambda line, picture="": log.warning("%s", line))
    t0 = trio.current_time()
    told = t0
    more_until = None
    with trio.move_on_after(JOIN_TIMEOUT_S):
        await trio.sleep(0.1)
        while len(peer.members) < wait_members:
            now = trio.current_time()
            refused = any(e["event"] == "refused" for e in peer.events)
            if refused and not peer._dialing and not peer.members:  # every bootstrap peer said no
                break
            if peer.members:  # one is in: the rest join the job as they come
                more_until = more_until or now + MEMBERS_WAIT_S
                if now >= more_until:
                    break
            elif now - told >= STALL_NOTICE_S:
                told = now
                failed = [e for e in peer.events if e["event"] == "dial-failed"]
                why = f": {failed[-1]['reason'][:200]}" if failed else ""
                say(f"still joining party {peer.party!r} after {now - t0:.0f} s "
                    f"({len(failed)} failed dials{why})")  # fmt: skip
            await trio.sleep(0.05)
    if bootstrap and not peer.members:
        raise PartyError(f"no bootstrap peer let us into party {peer.party!r} within {JOIN_TIMEOUT_S:.0f} s")
    with trio.move_on_after(MESH_SETTLE_S):
        await trio.sleep(0.2)
        while peer._dialing:
            await trio.sleep(0.05)


async def render_on_party(
    peer, db, spec, *, bootstrap: list[str], wait_members: int = 1, on_event=None, on_notice=None
) -> dict:
    """Run `peer`, join, queue `spec` on its own queue and coordinate it; returns the job summary.
    The job starts at once: members (and this peer) whose renderer is still starting join it when
    ready. `on_notice(line, picture)` hears when it is stuck (see `watch_job`); JobStalled ends it."""
    from .coordinate import JobRun

    out: dict = {}
    on_notice = on_notice or (lambda line, picture="": log.warning("%s", line))
    async with trio.open_nursery() as n:
        await n.start(peer.run)  # which starts its render process: it warms while we join
        await join_party(peer, bootstrap=bootstrap, wait_members=wait_members, on_notice=on_notice)
        record, _ = db.submit(spec, now=time.time(), submitter=peer.peer_id)
        if record.state == "done" and all(Path(p).exists() for p in record.outputs):
            out = {"job_id": record.id, "outputs": record.outputs, "units_by_peer": {}, "reused": True}
        else:
            run = JobRun(peer, db, record.id, render_self=peer.render)
            async with trio.open_nursery() as job:
                job.start_soon(lambda: watch_job(run, peer, on_notice=on_notice))
                out = await run.run()
                job.cancel_scope.cancel()
        n.cancel_scope.cancel()
    return out


# ---------------------------------------------------------------------------- the demo


def _pump(p: subprocess.Popen, lines: queue.Queue, events_path: Path) -> None:
    """A demo peer's stdout, read on a thread for as long as it runs: its first lines go to
    `lines` (start_demo_peers waits there for its address), and every line goes to `events_path`.
    Nobody reading it would let the pipe fill, and the peer would freeze in its next print."""
    feeding = True  # until its address is out: later lines only go to the file
    with open(events_path, "w") as events:
        for line in p.stdout:
            events.write(line)
            events.flush()
            if feeding:
                lines.put(line)
                feeding = '"event": "listening"' not in line
    if feeding:
        lines.put(None)


def start_demo_peers(count: int, root: Path, *, threads: int) -> tuple[list[subprocess.Popen], list[str]]:
    """Start `count` headless peers on loopback (homes under `root`); returns them and their addresses."""
    procs: list[subprocess.Popen] = []
    addrs: list[str] = []
    try:
        for i in range(count):
            home = root / f"peer{i + 1}"
            cmd = [
                sys.executable,
                "-m",
                "meshrender",
                "peer",
                "--headless",
                "--json",
                "--party",
                DEMO_PARTY,
                "--secret",
                "demo-secret",
                "--home",
                str(home),
                "--threads",
                str(threads),
                "--backend",
                "cpu",
            ]
            cmd += [a for addr in addrs[:1] for a in ("--bootstrap", addr)]  # fmt: skip
            log_path = root / f"peer{i + 1}.log"
            with open(log_path, "w") as log_file:  # the child keeps its own descriptor
                p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True)
            procs.append(p)
            lines: queue.Queue = queue.Queue(maxsize=0)
            threading.Thread(target=_pump, args=(p, lines, root / f"peer{i + 1}.events"), daemon=True,
                             name=f"demo-peer{i + 1}").start()  # fmt: skip
            t0 = time.monotonic()
            while True:
                waited = time.monotonic() - t0
                if waited > DEMO_START_TIMEOUT_S:
                    raise PartyError(f"demo peer {i + 1} did not start within {DEMO_START_TIMEOUT_S:.0f} s "
                                     f"(see {log_path})")  # fmt: skip
                try:
                    line = lines.get(timeout=min(STALL_NOTICE_S, DEMO_START_TIMEOUT_S - waited + 0.1))
                except queue.Empty:
                    log.info("demo peer %d has not started after %.0f s (a loaded machine?); waiting up to "
                             "%.0f s", i + 1, time.monotonic() - t0, DEMO_START_TIMEOUT_S)  # fmt: skip
                    continue
                if line is None:
                    raise PartyError(f"demo peer {i + 1} exited before listening (see {log_path})")
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "listening":
                    addrs.append(f"{ev['addrs'][0]}/p2p/{ev['peer_id']}")
                    break
    except BaseException:
        stop_demo_peers(procs)
        raise
    return procs, addrs


def wait_demo_renderers(
    procs: list[subprocess.Popen], root: Path, *, timeout: float = DEMO_START_TIMEOUT_S
) -> int:
    """Wait until each demo peer's renderer is up (its "renderer" event), so that the frame is
    shared by all of them: a member is offered work only once its renderer is ready, and on a
    loaded machine the first peers can render a small frame before the last one's kernel is
    loaded. Returns how many are up; one that failed, exited or is still warming after `timeout`
    is left to join the job when it can (the demo goes on with the others)."""
    up: set[int] = set()
    gone: set[int] = set()
    t0 = told = time.monotonic()
    while len(up) + len(gone) < len(procs) and time.monotonic() - t0 < timeout:
        for i, p in enumerate(procs):
            if i in up or i in gone:
                continue
            events = _demo_events(root / f"peer{i + 1}.events")
            if any(e.get("event") == "renderer" for e in events):
                up.add(i)
            elif any(e.get("event") == "renderer-state" and e.get("state") == "failed" for e in events) or (
                p.poll() is not None
            ):
                gone.add(i)
                log.warning("demo peer %d has no renderer (see %s)", i + 1, root / f"peer{i + 1}.log")
        if time.monotonic() - told >= STALL_NOTICE_S:
            told = time.monotonic()
            log.info("%d of %d demo peers have their renderer up after %.0f s (loading kernels)",
                     len(up), len(procs), told - t0)  # fmt: skip
        time.sleep(0.1)
    return len(up)


def _demo_events(path: Path) -> list[dict]:
    """The JSON events a demo peer printed so far (its pump thread writes them to `path`)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:  # the line being written, or not an event
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


def stop_demo_peers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def demo_threads(peers: int) -> int:
    return max(1, (os.cpu_count() or 1) // peers)
