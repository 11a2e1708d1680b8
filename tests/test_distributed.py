"""Frames rendered across subprocess peers on 127.0.0.1: bit-identical to one local render, and
still bit-identical when a worker is killed or frozen mid-frame or the coordinator is restarted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO
from party import PARTY, SECRET, PeerProc

from meshrender.output import read_exr
from meshrender.render import render_frame
from meshrender.settings import RenderSettings
from meshrender.units import frame_units

pytestmark = pytest.mark.slow

# long enough that every peer gets leases and a worker can be killed part-way (a few seconds on
# 2 cores): 8x8 buckets x 8 passes
LONGER = RenderSettings(width=128, height=128, spp=256, pass_spp=32, max_depth=4, bucket_px=16)
LONGER_ARGS = ["--res", "128x128", "--spp", "256", "--pass-spp", "32", "--max-depth", "4", "--tile", "16"]
WORKER_ARGS = ("--threads", "1", "--backend", "cpu")


def party_render(home, bootstrap: str, out, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "meshrender", "render", "cornell", "--party", PARTY, "--secret", SECRET,
           "--bootstrap", bootstrap, "--home", str(home), "--threads", "1", "--backend", "cpu", "--json",
           "-o", str(out), *extra]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def local_images(cornell, renderer_for):
    """The one-peer reference renders, in this process (the session's renderer)."""
    r = renderer_for(cornell)
    return {s: render_frame(r, s).image() for s in (LONGER,)}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture
def workers(tmp_path):
    started: list[PeerProc] = []

    def start(n: int) -> list[PeerProc]:
        for _ in range(n):
            extra = [*WORKER_ARGS, *(["--bootstrap", started[0].addr] if started else [])]
            started.append(PeerProc(tmp_path / f"w{len(started)}", *extra))
        return started

    yield start
    for p in started:
        if p.alive():
            p.proc.send_signal(signal.SIGCONT)
        p.stop()


def test_three_peers_render_the_same_bits_as_one(tmp_path, workers, local_images):
    a, b = workers(2)
    summary = finish(party_render(tmp_path / "c", a.addr, tmp_path / "party.exr", LONGER_ARGS))
    units = len(frame_units(LONGER))
    assert sum(summary["units_by_peer"].values()) == units
    assert set(summary["units_by_peer"]) >= {a.peer_id, b.peer_id}, summary["units_by_peer"]
    assert len(summary["units_by_peer"]) == 3  # the coordinating peer renders too
    assert same_bits(read_exr(tmp_path / "party.exr"), local_images[LONGER])
    record = json.loads((tmp_path / "party.json").read_text())
    assert record["job_id"] == summary["job_id"]
    job_dir = tmp_path / "c" / "results" / summary["job_id"]
    provenance = json.loads((job_dir / "job.json").read_text())
    assert len(provenance["units"]) == units
    assert {u["peer"] for u in provenance["units"]} == set(summary["units_by_peer"])
    assert all(u["backend"] for u in provenance["units"])
    assert (job_dir / "frame_0000.png").exists() and (job_dir / "frame_0000.exr").exists()
    # the same command again finds the finished job: nothing is rendered twice
    again = finish(party_render(tmp_path / "c", a.addr, tmp_path / "again.exr", LONGER_ARGS))
    assert again["job_id"] == summary["job_id"] and again.get("reused")
    assert same_bits(read_exr(tmp_path / "again.exr"), local_images[LONGER])


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_worker_lost_mid_frame_loses_its_units_and_the_frame_is_still_exact(
    tmp_path, workers, local_images, how
):
    a, b = workers(2)
    coord = party_render(tmp_path / "c", a.addr, tmp_path / "party.exr", LONGER_ARGS)
    b.wait_for("lease", timeout=120)
    time.sleep(0.5)  # part-way into its lease (the frame takes about 5 s)
    b.proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    t_lost = time.monotonic()
    summary = finish(coord)
    assert time.monotonic() - t_lost < 200
    assert sum(summary["units_by_peer"].values()) == len(frame_units(LONGER))
    # it lost its units: dropped with its connection, or (frozen) for missing its heartbeats
    lost = b.peer_id in summary["removed"] or b.peer_id in summary["rejected"] or summary["silences"] >= 1
    assert lost, json.dumps(summary)
    assert same_bits(read_exr(tmp_path / "party.exr"), local_images[LONGER])


def test_a_restarted_coordinator_resumes_without_rendering_returned_units(tmp_path, workers, local_images):
    from meshrender.jobs import JobDB

    (a,) = workers(1)
    home = tmp_path / "c"
    coord = party_render(home, a.addr, tmp_path / "first.exr", LONGER_ARGS)
    deadline = time.monotonic() + 180
    returned = 0
    while returned < 8 and time.monotonic() < deadline:
        time.sleep(0.3)
        if (home / "jobs.sqlite").exists():
            with JobDB(home / "jobs.sqlite") as db:
                running = db.running()
                returned = running[0].units_done if running else 0
    coord.kill()
    coord.wait()
    assert returned >= 8
    with JobDB(home / "jobs.sqlite") as db:
        (job,) = db.running()
        kept = len(db.results(job.id))
    summary = finish(party_render(home, a.addr, tmp_path / "party.exr", LONGER_ARGS))
    assert summary["job_id"] == job.id
    assert summary["units_resumed"] == kept >= returned
    assert sum(summary["units_by_peer"].values()) == len(frame_units(LONGER)) - kept
    assert same_bits(read_exr(tmp_path / "party.exr"), local_images[LONGER])
