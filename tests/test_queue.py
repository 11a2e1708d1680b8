"""The peer's job queue with subprocess peers on 127.0.0.1: jobs submitted while no peer runs run
by priority when one starts, a peer killed mid-job finds its queue as it was and resumes; a job
submitted to a remote peer renders there and its files come back; cancel stops every worker at
once; a worker that returns wrong blocks is caught by a duplicate and nothing it said stands."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
from party import PARTY, SECRET, PeerProc, cli

from meshrender.jobs import JobDB
from meshrender.output import read_exr
from meshrender.render import render_frame
from meshrender.settings import RenderSettings
from meshrender.units import frame_units

pytestmark = pytest.mark.slow

WORKER = ("--threads", "1", "--backend", "cpu")
SMALL = ("--res", "32x32", "--spp", "16", "--pass-spp", "16", "--tile", "16", "--max-depth", "4")
# a few seconds on 2 cores, in 4x4 buckets x 16 passes: long enough to kill or cancel part-way
LONG = RenderSettings(width=64, height=64, spp=512, pass_spp=32, max_depth=4, bucket_px=16)
LONG_ARGS = ("--res", "64x64", "--spp", "512", "--pass-spp", "32", "--tile", "16", "--max-depth", "4")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def submit(home, *args: str, scene: str = "cornell") -> str:
    r = cli("submit", scene, "--json", *args, home=home)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)["id"]


def jobs(home, *args: str) -> dict[str, dict]:
    r = cli("jobs", "--json", *args, home=home)
    assert r.returncode == 0, r.stderr[-2000:]
    return {j["id"]: j for j in json.loads(r.stdout)}


@pytest.fixture
def peers():
    started: list[PeerProc] = []

    def start(home, *extra: str, **kw) -> PeerProc:
        p = PeerProc(home, *WORKER, *extra, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture(scope="module")
def long_image(cornell, renderer_for):
    return render_frame(renderer_for(cornell), LONG).image()


def test_a_queue_runs_by_priority_and_a_killed_peer_resumes_it_as_it_was(tmp_path, peers, long_image):
    home = tmp_path / "a"
    # queued while no peer runs here
    low = submit(home, *SMALL, "--seed", "1", "--priority", "-3")
    mid = submit(home, *SMALL, "--seed", "2")
    high = submit(home, *SMALL, "--seed", "3", "--priority", "5")
    first = submit(home, *LONG_ARGS, "--priority", "10")
    listed = jobs(home)
    assert {j["state"] for j in listed.values()} == {"queued"} and len(listed) == 4
    a = peers(home)
    a.wait_for("job-started", job=first, timeout=60)
    deadline = time.monotonic() + 60
    done = 0
    while done < 8 and time.monotonic() < deadline:
        time.sleep(0.2)
        with JobDB(home / "jobs.sqlite") as db:
            done = db.get(first).units_done
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    assert done >= 8
    listed = jobs(home)
    assert listed[first]["state"] == "running" and listed[first]["units_done"] >= done
    assert {listed[j]["state"] for j in (low, mid, high)} == {"queued"}
    # restarted: the running job resumes, then the rest by priority
    a2 = peers(home)
    resumed = a2.wait_for("job-started", job=first, timeout=60)
    assert resumed["resumed"] >= done
    for job in (first, high, mid, low):
        a2.wait_for("job-done", job=job, timeout=120)
    order = [e["job"] for e in a2.events if e["event"] == "job-started"]
    assert order == [first, high, mid, low]
    listed = jobs(home)
    assert {j["state"] for j in listed.values()} == {"done"}
    r = cli("results", first, "--json", home=home)
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["files"]
    assert [f.rsplit("/", 1)[-1] for f in files] == ["frame_0000.exr", "frame_0000.png", "job.json"]
    assert same_bits(read_exr(files[0]), long_image)
    provenance = json.loads(open(files[2]).read())
    assert len(provenance["units"]) == len(frame_units(LONG))


def test_a_job_submitted_to_a_remote_peer_runs_there_and_its_results_come_back(tmp_path, peers, long_image):
    a = peers(tmp_path / "a")
    b = peers(tmp_path / "b", "--bootstrap", a.addr)
    to = ("--to", a.addr, "--party", PARTY, "--secret", SECRET)
    client = tmp_path / "client"
    job = submit(client, *LONG_ARGS, *to)  # the client exits at once: a holds the scene by now
    a.wait_for("job-done", job=job, timeout=120)
    served = b.wait_for("job-served", coordinator=a.peer_id, timeout=30)
    assert served["units"] > 0  # the party rendered it, not a alone
    assert jobs(client, *to)[job]["state"] == "done"
    assert jobs(client) == {}  # nothing was queued on the client's own machine
    out = tmp_path / "fetched"
    r = cli("results", job[:8], "-o", str(out), "--json", *to, home=client)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["frame_0000.exr", "frame_0000.png", "job.json"]
    assert same_bits(read_exr(out / "frame_0000.exr"), long_image)
    # a wrong secret gets nothing
    r = cli("jobs", "--to", a.addr, "--party", PARTY, "--secret", "wrong", home=client, timeout=60)
    assert r.returncode != 0 and "let us into party" in r.stderr


def test_cancel_stops_every_worker_within_a_second(tmp_path, peers):
    home = tmp_path / "a"
    a = peers(home)
    b = peers(tmp_path / "b", "--bootstrap", a.addr)
    c = peers(tmp_path / "c", "--bootstrap", a.addr)
    job = submit(home, *LONG_ARGS, "--spp", "4096", "--seed", "9")  # about a minute of work
    for w in (b, c):
        w.wait_for("lease", job=job, timeout=60)
    time.sleep(0.5)
    r = cli("cancel", job[:10], home=home)
    cancelled_at = time.time()  # the cancel is committed before the command returns
    assert r.returncode == 0, r.stderr
    for w in (b, c):
        ev = w.wait_for("job-served", coordinator=a.peer_id, timeout=10)
        assert ev["ended"] == "cancelled"
        assert ev["t"] - cancelled_at < 1.0, ev  # its kernel was stopped, not left to finish
    assert jobs(home)[job]["state"] == "cancelled"
    time.sleep(1.0)
    assert not [e for e in b.events + c.events if e["event"] == "lease" and e["t"] > cancelled_at]
    r = cli("results", job, home=home)
    assert r.returncode != 0 and "cancelled" in r.stderr


LIAR = """
import sys
import msgspec
from meshrender import renderproc
from meshrender.cli import main

honest = renderproc.RenderProcess.render

async def render(self, scene_id, settings, unit, **kw):
    result, rendered = await honest(self, scene_id, settings, unit, **kw)
    return result, msgspec.structs.replace(rendered, sums=bytes(len(rendered.sums)))  # black, but well formed

renderproc.RenderProcess.render = render
sys.exit(main(["peer", "--headless", "--json", *sys.argv[1:]]))
"""


def test_a_worker_returning_wrong_blocks_is_caught_and_nothing_it_said_stands(tmp_path, peers, long_image):
    home = tmp_path / "a"
    a = peers(home, "--verify", "1.0")
    b = peers(tmp_path / "b", "--bootstrap", a.addr)
    liar = peers(tmp_path / "liar", "--bootstrap", a.addr, script=LIAR)
    for p in (b, liar):
        a.wait_for("peer-joined", peer=p.peer_id, timeout=30)
    # a member is offered work once its renderer is up: on a loaded machine the frame can be done
    # before the liar's is, and a liar that took no unit cannot be caught
    for p in (a, b, liar):
        p.wait_for("renderer", timeout=300)
    job = submit(home, *LONG_ARGS)
    a.wait_for("job-done", job=job, timeout=180)
    penalties = [e for e in a.events if e["event"] == "penalty"]
    assert penalties and {e["peer"] for e in penalties} == {liar.peer_id}, penalties
    assert liar.wait_for("lease", job=job, timeout=1)  # it did take part
    r = cli("results", job, "--json", home=home)
    files = json.loads(r.stdout)["files"]
    assert same_bits(read_exr(files[0]), long_image)
    provenance = json.loads(open(files[2]).read())
    assert liar.peer_id not in {u["peer"] for u in provenance["units"]}


def test_an_animation_renders_frame_by_frame_each_file_written_as_it_completes(tmp_path, peers, renderer_for):
    from meshrender.scene.compile import compile_scene
    from meshrender.scene.load import load_scene

    # an animated scene's own frame range is the default
    idle = tmp_path / "idle"
    whole = submit(idle, "--res", "32x32", scene="cornell_orbit")
    assert (jobs(idle)[whole]["first_frame"], jobs(idle)[whole]["last_frame"]) == (0, 23)
    settings = RenderSettings(width=32, height=32, spp=64, pass_spp=16, max_depth=4, bucket_px=16)
    home = tmp_path / "a"
    a = peers(home)
    b = peers(tmp_path / "b", "--bootstrap", a.addr)
    a.wait_for("peer-joined", peer=b.peer_id, timeout=30)
    args = ("--res", "32x32", "--spp", "64", "--pass-spp", "16", "--tile", "16", "--max-depth", "4")
    job = submit(home, *args, "--frames", "3..6", scene="cornell_orbit")
    done = a.wait_for("job-done", job=job, timeout=120)
    frames = [e for e in a.events if e["event"] == "frame-done" and e["job"] == job]
    assert sorted(e["frame"] for e in frames) == [3, 4, 5, 6]
    assert all(e["t"] <= done["t"] for e in frames)
    assert frames[0]["t"] < frames[-1]["t"]  # written as each frame completed, not all at the end
    r = renderer_for(compile_scene(load_scene("cornell_orbit")))
    images = []
    for f in range(3, 7):
        image = read_exr(home / "results" / job / f"frame_{f:04d}.exr")
        assert same_bits(image, render_frame(r, settings, frame=f).image()), f
        images.append(image)
    assert not same_bits(images[0], images[1])  # the camera moves
    provenance = json.loads((home / "results" / job / "job.json").read_text())
    assert provenance["frames"] == [3, 6] and len(provenance["outputs"]) == 8
