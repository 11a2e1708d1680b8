"""No silent hang: the demo finishes beside busy loops on a cold kernel cache; a dead renderer comes
back; a stuck job is reported and bounded; redials back off; py-libp2p's failure blocks become
one rate-limited line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import trio
from conftest import REPO

from meshrender.backoff import Backoff
from meshrender.distributed import StallWatch
from meshrender.net import logs
from meshrender.node import DIAL_RETRY_MAX_S, DIAL_RETRY_S, Peer

# ---------------------------------------------------------------------------- sans-IO pieces


def test_stall_watch_tells_every_quiet_period_and_gives_up_only_when_nobody_warms():
    w = StallWatch(0.0, quiet_s=20, max_s=100, nobody_max_s=50)
    assert w.observe(1, 0, warming=False, can_render=True) == ""  # the first count is progress
    assert w.observe(20, 0, warming=False, can_render=True) == ""
    assert w.observe(21, 0, warming=False, can_render=True) == "notice"
    assert w.quiet_for(21) == 20
    assert w.observe(30, 0, warming=False, can_render=True) == ""  # once per quiet period
    assert w.observe(41, 0, warming=False, can_render=True) == "notice"
    assert w.observe(42, 3, warming=False, can_render=True) == ""  # a unit came: all clocks restart
    assert w.observe(61, 3, warming=False, can_render=True) == ""
    assert w.observe(62, 3, warming=False, can_render=True) == "notice"
    # a renderer still compiling holds the hard bound off (its own start bounds apply)...
    for t in range(63, 300, 10):
        assert w.observe(t, 3, warming=True, can_render=False) in ("", "notice")
    # ...and once nobody warms and nobody can render, it gives up after nobody_max_s
    assert w.observe(300, 3, warming=False, can_render=False) in ("", "notice")
    assert w.observe(350, 3, warming=False, can_render=False) == "give-up"


def test_stall_watch_gives_up_after_the_hard_bound_without_progress():
    w = StallWatch(0.0, quiet_s=20, max_s=100, nobody_max_s=1000)
    w.observe(0.5, 7, warming=False, can_render=True)
    verdicts = [w.observe(t, 7, warming=False, can_render=True) for t in range(1, 102)]
    assert verdicts.count("notice") == 4 and verdicts[-1] == "give-up"


def test_redial_backoff_doubles_from_2_s_to_5_min_and_gives_up():
    b = Backoff(DIAL_RETRY_S, DIAL_RETRY_MAX_S, give_up_s=3600)
    now, waits = 0.0, []
    while not b.exhausted(now):
        waits.append(b.failed(now))
        now = b.next_at
        assert not b.ready(now - 0.01) and b.ready(now)
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(waits) == DIAL_RETRY_MAX_S == 300.0 and waits == sorted(waits)
    assert len(waits) < 25  # an hour of redials: 20 tries, not 1800
    b.reset()
    assert b.failed(now) == 2.0


# ---------------------------------------------------------------------------- libp2p's log lines


@pytest.fixture
def libp2p_lines(caplog):
    handler = logs.install()
    clock = [100.0]
    handler.clock = lambda: clock[0]
    caplog.set_level(logging.INFO, logger="meshrender.libp2p")
    yield handler, clock, caplog
    logging.getLogger("libp2p").removeHandler(handler)


def test_libp2p_multi_line_failures_come_out_as_one_rate_limited_line(libp2p_lines):
    handler, clock, caplog = libp2p_lines
    lib = logging.getLogger("libp2p.host.basic_host")  # the library's own logger and message
    block = (
        "Failed to open stream to peer 12D3KooWEweK7A63L9gCUWX75mtcNqrMfC6kEbakeGv7hwiunwxf:\n"
        "  Error: fail to read from multiselect communicator\n"
        "  Protocols: ['/meshrender/ping/1']\n"
        "  Timeout: 30s\n"
        "  Connection: Yamux\n"
        "  Connection State: established=True, handshake=True\n"
        "  Registry Stats: None"
    )
    for _ in range(5):
        lib.error(block)
    lines = [r.getMessage() for r in caplog.records if r.name == "meshrender.libp2p"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "Failed to open stream" in lines[0] and "fail to read from multiselect" in lines[0]
    assert "/meshrender/ping/1" in lines[0]
    clock[0] += logs.REPEAT_S + 1
    lib.error(block)
    lines = [r.getMessage() for r in caplog.records if r.name == "meshrender.libp2p"]
    assert len(lines) == 2 and "4 more" in lines[1]
    try:
        raise ConnectionResetError("reset by peer\nsecond line")
    except ConnectionResetError:
        logging.getLogger("libp2p.network.swarm").exception("stream handler failed")
    last = [r for r in caplog.records if r.name == "meshrender.libp2p"][-1]
    assert last.exc_info is None and "\n" not in last.getMessage()  # no traceback
    assert "ConnectionResetError: reset by peer second line" in last.getMessage()


def test_a_real_dial_failure_inside_libp2p_is_one_line_of_ours(libp2p_lines, tmp_path, capfd):
    """py-libp2p's TCP transport logs "Failed to open TCP stream" itself when a dial is refused;
    it reaches our logger, once, and nothing raw reaches stderr."""
    handler, clock, caplog = libp2p_lines
    events: list[dict] = []
    peer = Peer(home=tmp_path / "a", party="p", secret=b"s" * 16, render=False, on_event=events.append)

    async def main():
        async with trio.open_nursery() as n:
            await n.start(peer.run)
            closed = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEweK7A63L9gCUWX75mtcNqrMfC6kEbakeGv7hwiunwxf"
            for _ in range(3):
                assert await peer.dial(closed) is None
            n.cancel_scope.cancel()

    trio.run(main)
    ours = [r.getMessage() for r in caplog.records if r.name == "meshrender.libp2p"]
    tcp = [m for m in ours if "Failed to open TCP stream" in m]
    assert len(tcp) == 1 and "\n" not in tcp[0]  # three failures, one line within REPEAT_S
    assert sum(e["event"] == "dial-failed" for e in events) == 3  # our own events still say each
    assert "Failed to open TCP stream" not in capfd.readouterr().err


# ---------------------------------------------------------------------------- the peer's renderer


def test_the_peer_restarts_a_killed_renderer_and_renders_with_it(tmp_path, cornell):
    from meshrender.settings import RenderSettings
    from meshrender.store.chunkstore import ChunkStore
    from meshrender.store.scenes import import_scene
    from meshrender.units import WorkUnit

    with ChunkStore(tmp_path / "store") as store:
        scene_id = import_scene(store, cornell).scene_id
    events: list[dict] = []

    async def main():
        with ChunkStore(tmp_path / "store") as store:
            peer = Peer(home=tmp_path / "home", party="p", secret=b"s" * 16, store=store, backend="cpu",
                        threads=1, on_event=events.append)  # fmt: skip
            async with trio.open_nursery() as n:
                await n.start(peer.run)
                with trio.fail_after(120):
                    while not peer.rendering.proc.running():
                        await trio.sleep(0.1)
                first = peer.rendering.proc.pid
                assert peer.status().renderer == "ready"
                os.kill(first, signal.SIGKILL)
                with trio.fail_after(120):  # nobody asked for a unit: the peer brings it back itself
                    while not (peer.rendering.proc.running() and peer.rendering.proc.pid != first):
                        await trio.sleep(0.1)
                settings = RenderSettings(width=32, height=24, spp=4, pass_spp=4, max_depth=4)
                u = WorkUnit(x0=0, y0=0, width=8, height=8, pass_index=0)
                result, _ = await peer.rendering.proc.render(scene_id, settings, u)
                assert result.sums.shape == (1, 8, 8, 3)
                n.cancel_scope.cancel()

    trio.run(main)
    states = [e["state"] for e in events if e["event"] == "renderer-state"]
    assert "ready" in states and states.index("ready") < len(states) - 1
    lost = [e for e in events if e["event"] == "renderer-state" and "exited" in e["note"]]
    assert lost and "code -9" in lost[0]["note"]


def test_a_job_stuck_on_a_slow_renderer_says_who_and_why_then_finishes(tmp_path, cornell, monkeypatch):
    """The coordinator's only member starts its renderer slowly (8 s before it even loads Taichi):
    while no unit comes the watcher names that member and its renderer's state, and the job is
    offered to it once its status says ready, and finishes."""
    from meshrender.coordinate import JobRun
    from meshrender.distributed import watch_job
    from meshrender.jobs import JobDB, JobSpec
    from meshrender.renderproc import SLOW_START_ENV
    from meshrender.settings import RenderSettings
    from meshrender.store.chunkstore import ChunkStore
    from meshrender.store.scenes import import_scene

    monkeypatch.setenv(SLOW_START_ENV, "8")
    settings = RenderSettings(width=32, height=24, spp=4, pass_spp=4, max_depth=4, bucket_px=16)
    with ChunkStore(tmp_path / "c" / "store") as store:
        scene_id = import_scene(store, cornell).scene_id
    secret = b"a-good-long-secret"
    coord = Peer(home=tmp_path / "c", party="p", secret=secret, render=False)
    member = Peer(home=tmp_path / "m", party="p", secret=secret, backend="cpu", threads=1)
    notices: list[str] = []

    async def main():
        async with trio.open_nursery() as n:
            await n.start(member.run)
            await n.start(coord.run)
            assert await coord.dial(f"{member.addrs[0]}/p2p/{member.peer_id}") == member.peer_id
            with JobDB(tmp_path / "c" / "jobs.sqlite") as db:
                spec = JobSpec(scene_id=scene_id, settings=settings, backend="cpu")
                rec, _ = db.submit(spec, now=time.time())
                run = JobRun(coord, db, rec.id, render_self=False)
                async with trio.open_nursery() as job:
                    watch = StallWatch(trio.current_time(), quiet_s=2.0)
                    say = lambda line, _: notices.append(line)  # noqa: E731
                    job.start_soon(lambda: watch_job(run, coord, on_notice=say, watch=watch))
                    with trio.fail_after(180):
                        out = await run.run()
                    job.cancel_scope.cancel()
            n.cancel_scope.cancel()
        return out

    out = trio.run(main)
    assert out["units_by_peer"] == {member.peer_id: out["units_total"]}
    assert notices, "a job waiting for 8 s on a renderer said nothing"
    about = [line for line in notices if member.peer_id[-8:] in line]
    assert about and any("renderer" in line or "no status" in line for line in about), notices
    assert all(line.startswith("no unit finished for") for line in notices)
    print("\n".join(notices))


# ---------------------------------------------------------------------------- redials


def test_a_bootstrap_dial_backs_off_and_logs_once_per_step(tmp_path):
    events: list[dict] = []
    peer = Peer(home=tmp_path / "a", party="p", secret=b"s" * 16, render=False, on_event=events.append)

    async def main():
        async with trio.open_nursery() as n:
            await n.start(peer.run)
            gone = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEweK7A63L9gCUWX75mtcNqrMfC6kEbakeGv7hwiunwxf"
            n.start_soon(peer.dial, gone, True)
            await trio.sleep(7.0)  # fixed 2 s retries would have tried 4 times
            n.cancel_scope.cancel()

    trio.run(main)
    waits = [e["retry_in_s"] for e in events if e["event"] == "dial-failed"]
    assert waits[:2] == [2.0, 4.0] and len(waits) <= 3  # tries at 0, 2 and 6 s


def test_a_peer_that_refuses_our_handshake_is_not_dialed_again(tmp_path):
    events: list[dict] = []
    member = Peer(home=tmp_path / "m", party="p", secret=b"right-secret-123", render=False)
    outsider = Peer(home=tmp_path / "o", party="p", secret=b"wrong-secret-456", render=False,
                    on_event=events.append)  # fmt: skip

    async def main():
        async with trio.open_nursery() as n:
            await n.start(member.run)
            await n.start(outsider.run)
            addr = f"{member.addrs[0]}/p2p/{member.peer_id}"
            n.start_soon(outsider.dial, addr, True)  # a bootstrap address: it would retry
            await trio.sleep(6.0)
            assert await outsider.dial(addr, True) is None  # asked again: not even tried
            n.cancel_scope.cancel()

    trio.run(main)
    tries = [e for e in events if e["event"] in ("refused", "dial-failed") and e["peer"] == member.peer_id]
    assert [e["event"] for e in tries] == ["refused"], tries


# ---------------------------------------------------------------------------- the demo, loaded


@pytest.mark.slow
def test_the_demo_finishes_beside_busy_loops_with_an_empty_kernel_cache(tmp_path):
    """The README's main job on a loaded machine: a busy loop on every core, and a kernel cache that
    has never seen the kernel (every peer compiles it, slowly). It must finish and say so.
    One loop per core is enough to starve it (bench/demo_busy.py --loops 6 runs the heavier case)."""
    env = {**os.environ, "MESHRENDER_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(os.cpu_count() or 2)]
    try:
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "meshrender", "demo", "--json", "-o", str(tmp_path / "demo.png"),
             "--res", "128x128", "--spp", "16"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        wall = time.monotonic() - t0
    finally:
        for p in loops:
            p.kill()
            p.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (tmp_path / "demo.png").exists() and out["outputs"]
    assert str(tmp_path / "demo.denoised.png") in out["written"]  # the demo denoises by default
    assert sum(out["units_by_peer"].values()) == out["units_total"]
    # the demo waits for its peers' renderers before the frame, so every one of them renders
    assert len(out["units_by_peer"]) == out["peers"] == 3, out["units_by_peer"]
    assert "Timeout: 30s" not in done.stderr and "Traceback" not in done.stderr
    print(f"demo beside {len(loops)} busy loops, cold kernel cache: {wall:.1f} s")
