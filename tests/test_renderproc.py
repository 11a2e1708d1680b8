"""The render child process: same bits as rendering in-process, clear errors, killable mid-unit."""

from __future__ import annotations

import time

import numpy as np
import pytest
import trio

from meshrender.renderproc import RenderError, RenderProcess
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
