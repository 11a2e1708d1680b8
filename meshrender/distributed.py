"""Rendering one frame on the party from the command line (`meshrender render SCENE --party ...`)
and the demo party (`meshrender demo`).

The command runs a peer of its own (the one in `--home`), imports the scene into its store, joins
the party through `--bootstrap` (or mDNS), puts the job on its own queue and coordinates it:
every member that renders takes leases, and so does this peer. The job's id is the hash of its
content, so running the same command again after a crash resumes the job: units already returned
are not rendered again; a finished job is not rendered again at all.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from .errors import MeshrenderError

log = logging.getLogger("meshrender.distributed")

JOIN_TIMEOUT_S = 10.0  # no bootstrap peer let us in within this: give up
MESH_SETTLE_S = 3.0  # then wait this long at most for the members they named
DEMO_START_TIMEOUT_S = 60.0  # a demo peer prints its address within this (imports, key, listen)
DEMO_PARTY = "demo"
RENDERER_WAIT_S = 60.0  # a job waits this long at most for this peer's own render process to start


class PartyError(MeshrenderError):
    pass


def jobs_db_path(home: Path) -> Path:
    return Path(home) / "jobs.sqlite"


async def join_party(peer, *, bootstrap: list[str], wait_members: int = 1) -> None:
    """Wait until a bootstrap peer let us in (or refused), then for the members it named."""
    with trio.move_on_after(JOIN_TIMEOUT_S):
        await trio.sleep(0.1)
        while len(peer.members) < wait_members:
            refused = any(e["event"] == "refused" for e in peer.events)
            if refused and not peer._dialing and not peer.members:  # every bootstrap peer said no
                break
            await trio.sleep(0.05)
    if bootstrap and not peer.members:
        raise PartyError(f"no bootstrap peer let us into party {peer.party!r}")
    with trio.move_on_after(MESH_SETTLE_S):
        await trio.sleep(0.2)
        while peer._dialing:
            await trio.sleep(0.05)


async def render_on_party(
    peer, db, spec, *, bootstrap: list[str], wait_members: int = 1, on_event=None
) -> dict:
    """Run `peer`, join, queue `spec` on its own queue and coordinate it; returns the job summary."""
    from .coordinate import JobRun

    out: dict = {}
    async with trio.open_nursery() as n:
        await n.start(peer.run)  # which starts its render process: it warms while we join
        await join_party(peer, bootstrap=bootstrap, wait_members=wait_members)
        if peer.render:  # the job starts when this peer can render too
            with trio.move_on_after(RENDERER_WAIT_S):
                try:
                    await peer.render_backend()
                except Exception as exc:  # noqa: BLE001 - the party renders without us
                    log.warning("this peer's renderer did not start: %s", exc)
        record, _ = db.submit(spec, now=time.time(), submitter=peer.peer_id)
        if record.state == "done" and all(Path(p).exists() for p in record.outputs):
            out = {"job_id": record.id, "outputs": record.outputs, "units_by_peer": {}, "reused": True}
        else:
            run = JobRun(peer, db, record.id, render_self=peer.render)
            out = await run.run()
        n.cancel_scope.cancel()
    return out


# ---------------------------------------------------------------------------- the demo


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
            log = open(root / f"peer{i + 1}.log", "w")
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
            procs.append(p)
            deadline = time.monotonic() + DEMO_START_TIMEOUT_S
            while True:
                line = p.stdout.readline()
                if not line:
                    raise PartyError(
                        f"demo peer {i + 1} exited before listening (see {root / f'peer{i + 1}.log'})"
                    )
                ev = json.loads(line)
                if ev.get("event") == "listening":
                    addrs.append(f"{ev['addrs'][0]}/p2p/{ev['peer_id']}")
                    break
                if time.monotonic() > deadline:
                    raise PartyError(f"demo peer {i + 1} did not start within {DEMO_START_TIMEOUT_S:.0f} s")
    except BaseException:
        stop_demo_peers(procs)
        raise
    return procs, addrs


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
