"""The render child process: same bits as rendering in-process, clear errors, killable mid-unit."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import trio

from meshrender.renderproc import (
    RESTART_BACKOFF_S,
    SLOW_START_ENV,
    RendererDown,
    RenderError,
    RenderProcess,
    restart_backoff_s,
)
from meshrender.settings import RenderSettings
from meshrender.store.chunkstore import ChunkStore
from meshrender.store.scenes import import_scene
from meshrender.units import WorkUnit

SETTINGS = RenderSettings(width=32, height=24, spp=8, pass_spp=4, max_depth=4)


def unit(x0=0, y0=0, w=4, h=4, p=0) -> WorkUnit:
    return WorkUnit(x0=x0, y0=y0, width=w, height=h, pass_index=p)


@pytest.fixture
def stored(tmp_path, cornell):
    with ChunkStore(tmp_path / "store") as store:
        scene_id = import_scene(store, cornell).scene_id
    return tmp_path / "store", scene_id


def test_child_renders_the_same_bits_and_reports_its_backend(stored, cornell, renderer_for):
    root, scene_id = stored
    u = WorkUnit(x0=8, y0=4, width=16, height=12, pass_index=0, pass_count=2)
    # the session's renderer: a Renderer of other threads here would restart Taichi under it
    local = renderer_for(cornell).render_unit(u, SETTINGS)

    async def main():
        proc = RenderProcess(root, backend="cpu", threads=1)
        try:
            ready = await proc.start()
            assert not ready.is_gpu and ready.backend
            result, meta = await proc.render(scene_id, SETTINGS, u)
            return result, meta
        finally:
            await proc.stop()

    result, meta = trio.run(main)
    assert np.array_equal(result.sums, local.sums) and result.sample_counts == local.sample_counts
    assert meta.seconds > 0


def test_missing_scene_is_a_clear_error_and_the_child_lives_on(stored):
    root, scene_id = stored

    async def main():
        proc = RenderProcess(root, backend="cpu", threads=1)
        try:
            with pytest.raises(RenderError, match="manifest"):
                await proc.render("ab" * 32, SETTINGS, unit())
            with pytest.raises(RenderError, match="outside"):
                await proc.render(scene_id, SETTINGS, unit(x0=30))
            result, _ = await proc.render(scene_id, SETTINGS, unit(p=1))
            assert result.sums.shape == (1, 4, 4, 3)
        finally:
            await proc.stop()

    trio.run(main)


def test_stop_kills_a_unit_mid_kernel_and_the_next_render_restarts(stored):
    root, scene_id = stored
    big = RenderSettings(width=256, height=256, spp=256, pass_spp=256, max_depth=8)

    async def main():
        proc = RenderProcess(root, backend="cpu", threads=1)
        try:
            await proc.render(scene_id, SETTINGS, unit())
            async with trio.open_nursery() as n:
                async def long():
                    with pytest.raises(RenderError, match="died|exited"):
                        await proc.render(scene_id, big, unit(w=256, h=256))

                n.start_soon(long)
                await trio.sleep(0.5)
                t0 = time.perf_counter()
                await proc.stop()
                stopped = time.perf_counter() - t0
            assert stopped < 1.0
            result, _ = await proc.render(scene_id, SETTINGS, unit())
            assert result.sums.shape == (1, 4, 4, 3)
        finally:
            await proc.stop()

    trio.run(main)


def test_a_killed_child_is_seen_dead_and_the_next_unit_restarts_it(stored):
    root, scene_id = stored

    async def main():
        proc = RenderProcess(root, backend="cpu", threads=1)
        try:
            await proc.start()
            first = proc.pid
            os.kill(first, signal.SIGKILL)  # the OOM killer, a user's kill -9
            with trio.fail_after(10):
                code = await proc.wait_exited()
            assert code == -signal.SIGKILL
            assert proc.state == "stopped" and "exited" in proc.note and not proc.running()
            result, _ = await proc.render(scene_id, SETTINGS, unit())
            assert result.sums.shape == (1, 4, 4, 3) and proc.pid != first and proc.starts == 2
        finally:
            await proc.stop()

    trio.run(main)


def test_the_start_deadline_counts_from_the_last_sign_of_life(stored, monkeypatch):
    """A child 6 s slow to start (the env hook idles it before importing anything: no CPU time
    used, only its "still starting" beats) starts under a 3 s no-sign-of-life deadline; frozen
    (SIGSTOP: no beats, no CPU), it fails after that deadline, and the next start waits out a
    back-off and gets a working renderer."""
    root, scene_id = stored
    monkeypatch.setenv(SLOW_START_ENV, "6")
    states: list[tuple[str, str]] = []

    async def main():
        proc = RenderProcess(root, backend="cpu", threads=1, stall_s=3.0,
                             on_state=lambda r: states.append((r.state, r.note)))  # fmt: skip
        try:
            t0 = time.monotonic()
            ready = await proc.start()
            assert ready.backend and time.monotonic() - t0 > 6.0  # twice the deadline, and alive
            assert ("starting", "renderer loading") in states
            assert any("so far" in note for _, note in states)  # a long start is reported as it goes
            await proc.stop()

            monkeypatch.setenv(SLOW_START_ENV, "30")
            async with trio.open_nursery() as n:

                async def freeze():
                    while proc.pid is None:
                        await trio.sleep(0.05)
                    await trio.sleep(0.5)
                    os.kill(proc.pid, signal.SIGSTOP)

                n.start_soon(freeze)
                t0 = time.monotonic()
                with pytest.raises(RendererDown, match="no sign of life"):
                    await proc.start()
            assert 3.0 <= time.monotonic() - t0 < 15.0
            assert proc.state == "failed" and proc.failures == 1
            assert proc.retry_at - trio.current_time() > 0  # backing off

            monkeypatch.delenv(SLOW_START_ENV)
            t0 = trio.current_time()
            await proc.start()
            assert trio.current_time() - t0 >= restart_backoff_s(1) * 0.9 and proc.failures == 0
            result, _ = await proc.render(scene_id, SETTINGS, unit())
            assert result.sums.shape == (1, 4, 4, 3)
        finally:
            await proc.stop()

    trio.run(main)


def test_restart_backoff_grows_and_is_bounded():
    waits = [restart_backoff_s(n) for n in range(0, 10)]
    assert waits[0] == 0 and waits == sorted(waits) and waits[-1] == RESTART_BACKOFF_S[-1]


def test_urgent_renders_go_before_queued_ones_and_each_kind_keeps_its_order():
    """A streaming session's units (urgent) wait only for the unit in the kernel, not for a batch
    job's units queued before them."""
    from meshrender.renderproc import UrgentFirstLock

    lock = UrgentFirstLock()
    order: list[str] = []

    async def render(name: str, urgent: bool, delay: float):
        await trio.sleep(delay)
        async with lock.hold(urgent):
            order.append(name)
            await trio.sleep(1.0)

    async def main():
        async with trio.open_nursery() as n:
            n.start_soon(render, "job-1", False, 0.0)  # in the kernel
            n.start_soon(render, "job-2", False, 0.1)
            n.start_soon(render, "job-3", False, 0.2)
            n.start_soon(render, "session-1", True, 0.3)
            n.start_soon(render, "session-2", True, 0.4)

    import trio.testing

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert order == ["job-1", "session-1", "session-2", "job-2", "job-3"]
