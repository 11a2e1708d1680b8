"""A render party frozen at one moment, for the TUI's snapshot tests: the snapshots and events a
peer sends (its statuses built as `Status` structs, its frame from a real `FrameView` fed leases
and results), and a queue in a real `jobs.sqlite` with a running, a queued, a done and a failed
job. Every time and id is fixed, so the screens drawn from it are the same on every machine."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import numpy as np

from meshrender.cli_common import local_db
from meshrender.frameview import FrameView
from meshrender.jobs import JobSpec, UnitRecord
from meshrender.protocol import Status
from meshrender.settings import RenderSettings
from meshrender.units import frame_units

NOW_S = 1_800_000_000.0  # the party's clock (2027-01-15 08:00:00 UTC)


def pid(name: str) -> str:
    """A peer id shaped like a libp2p one, fixed by `name`."""
    return "12D3KooW" + hashlib.sha256(name.encode()).hexdigest()[:44]


def sid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


ME, GPU, FELL, FETCHER, CLIENT, LOST = (pid(n) for n in ("me", "gpu", "fell", "fetcher", "client", "lost"))
SETTINGS = RenderSettings(width=256, height=192, spp=8, pass_spp=2, bucket_px=32)


def status(**kw) -> dict:
    base = dict(version="0.1.0", state="idle", backend="x64", fell_back=False, speed=None, threads=8,
                free_mem=8 << 30, load=0.5, scenes=1, gpu=False)  # fmt: skip
    return msgspec.structs.asdict(Status(**(base | kw)))


def frame_view(job: str) -> dict:
    """Frame 0 of `job` part way: pass 0 of every bucket in, pass 1 of the top rows, the rest
    leased to three peers; the image a smooth sky over a warm floor."""
    units = frame_units(SETTINGS)
    view = FrameView(job, SETTINGS.width, SETTINGS.height, SETTINGS.pass_count, units)
    peers = [ME, GPU, FELL]
    buckets = len(units) // SETTINGS.pass_count
    for i, u in enumerate(units[:buckets]):
        view.leased(peers[i % 3], [u])
    yy, xx = np.mgrid[0 : SETTINGS.height, 0 : SETTINGS.width]
    yy, xx = yy / SETTINGS.height, xx / SETTINGS.width
    sky = np.stack([0.2 + 0.3 * yy, 0.4 + 0.3 * yy, 0.9 - 0.2 * xx], axis=-1)
    floor = np.stack([0.8 - 0.3 * xx, 0.5 * np.ones_like(xx), 0.2 + 0.1 * yy], axis=-1)
    image = np.where((yy > 0.6)[..., None], floor, sky).astype(np.float32)
    done = units[:buckets] + units[buckets : buckets + 2 * SETTINGS.width // SETTINGS.bucket_px]
    for i, u in enumerate(done):
        block = image[u.y0 : u.y0 + u.height, u.x0 : u.x0 + u.width] * SETTINGS.pass_spp
        view.accepted(peers[i % 3], u, block[None].astype(np.float32), [SETTINGS.pass_spp])
    return view.to_json()


def snapshots(job: str) -> list[dict]:
    """Two snapshots: a member is present in the first and gone (lost) in the second."""
    members = {
        GPU: {"status": status(gpu=True, backend="cuda", speed=41.5, threads=1, load=1.2, units=96,
                               state="busy", activity="rendering")},  # fmt: skip
        FELL: {"status": status(fell_back=True, reason="CUDA: out of memory; rendering on 16 CPU threads",
                                speed=3.1, threads=16, load=15.8, units=21, state="busy",
                                activity="rendering")},  # fmt: skip
        FETCHER: {"status": status(speed=2.0, threads=4, load=0.3, scenes=0, state="busy",
                                   activity="fetching"), "chunks_serving": 12},  # fmt: skip
        CLIENT: {"status": status(renders=False, threads=1, load=0.1, scenes=0)},
    }
    moved = [(0, 52_000_000), (0, 0), (41_300_000, 0), (0, 0)]  # (served, received) per member
    for p, (served, received) in zip(members, moved, strict=True):
        members[p] |= {"bytes_served": served, "bytes_received": received}
    members[GPU]["chunks_fetching"] = 7
    me = status(speed=2.4, threads=8, load=7.9, units=33, state="busy", activity="rendering")
    first = {"peer_id": ME, "party": "studio", "status": me,
             "members": {**members, LOST: {"status": status(speed=1.0, units=4)}},
             "transfers": {}, "frames": []}  # fmt: skip
    transfers = {"bytes_in": 52_000_000, "bytes_out": 41_300_000, "chunks_in": 199, "chunks_out": 158}
    second = {"peer_id": ME, "party": "studio", "status": me, "members": members, "transfers": transfers,
              "frames": [frame_view(job)]}  # fmt: skip
    return [{"snapshot": first}, {"snapshot": second}]


def events() -> list[dict]:
    t = NOW_S - 30
    return [
        {"event": "joined", "t": t, "peer": GPU},
        {"event": "fetched", "t": t + 2, "scene_id": sid("classroom"), "chunks": 210, "seconds": 1.8},
        {"event": "job-started", "t": t + 3, "job": sid("job-running")},
        {"event": "penalty", "t": t + 9, "peer": LOST, "reason": "a result whose bytes are not its hash"},
        {"event": "worker-lost", "t": t + 12, "peer": LOST},
    ]


def results(units, tag: str, peer: str, at_s: float) -> list[UnitRecord]:
    return [UnitRecord(unit=u, chunk=sid(f"{tag}{i}"), peer=peer, backend="x64", seconds=1.0, at_s=at_s)
            for i, u in enumerate(units)]  # fmt: skip


def make_queue(home: Path) -> str:
    """jobs.sqlite under `home` with four jobs; returns the running job's id."""
    home.mkdir(parents=True, exist_ok=True)
    with local_db(home) as db:
        ids = []
        for i, name in enumerate(("running", "queued", "done", "failed")):
            spec = JobSpec(scene_id=sid(name), settings=SETTINGS, last_frame=3 if name == "running" else 0)
            rec, _ = db.submit(spec, priority=2 if name == "queued" else 0, now=NOW_S - 600 + 60 * i)
            ids.append(rec.id)
        running, _, done, failed = ids
        units = frame_units(SETTINGS)
        db.start(running, now=NOW_S - 120, units_total=4 * len(units))
        db.record_results(running, results(units, "r", ME, NOW_S - 60))
        db.start(done, now=NOW_S - 400, units_total=len(units))
        db.record_results(done, results(units, "d", GPU, NOW_S - 300))
        db.finish(done, now=NOW_S - 300, outputs=["out/done_0000.exr"])
        db.start(failed, now=NOW_S - 250, units_total=len(units))
        db.fail(failed, now=NOW_S - 240, error="no member holds scene 3f2a")
        return running
