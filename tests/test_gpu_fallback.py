"""A GPU that runs out of memory falls back to the CPU, and every place a user looks says so.

There is no GPU here, so the fault is injected where Taichi would raise it: MESHRENDER_FAULT makes
the first scene upload (`gpu-oom`) or kernel launch (`gpu-oom-launch`) of a process raise the
RuntimeError Taichi 1.7.4 raises on a CUDA out-of-memory. What follows is the real fallback: Taichi
restarted on the CPU, the scene uploaded again, the unit rendered again. Renders run in
subprocesses: re-initialising Taichi in the test process would invalidate the session's renderers.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from party import PARTY, SECRET, PeerProc, cli
from rich.text import Text

from kernels.backend import CUDA_OOM_LAUNCH, CUDA_OOM_UPLOAD, FAULT_ENV, gpu_oom_reason
from meshrender.output import read_exr


def test_taichis_out_of_memory_errors_are_told_from_other_errors():
    # the texts Taichi 1.7.4 raises (kernels/backend.py GPU_OOM_TEXTS says where each comes from)
    real = [
        CUDA_OOM_UPLOAD,
        CUDA_OOM_LAUNCH,
        "[cuda_driver.h:operator()@92] CUDA Error CUDA_ERROR_OUT_OF_MEMORY: out of memory while calling "
        "malloc_async_impl (cuMemAllocAsync)",
        "[device_memory_pool.cpp:allocate_raw_memory@83] Device memory allocation (8589934592 B) failed.",
        "[gfx_program.cpp:allocate_memory_on_device@51] Assertion failure: res == RhiResult::success",
        "[runtime.cpp:launch_kernel@473] Failed to allocate ext arr buffer",
    ]
    for text in real:
        reason = gpu_oom_reason(RuntimeError(text))
        assert reason is not None and reason.strip() == " ".join(text.split())
    assert gpu_oom_reason(RuntimeError("x" * 10_000 + " CUDA_ERROR_OUT_OF_MEMORY")) is not None
    assert len(gpu_oom_reason(RuntimeError("CUDA_ERROR_OUT_OF_MEMORY " + "x" * 10_000))) <= 300
    # not memory: a bad kernel argument, a device-side assert, a Python error with the same words
    assert gpu_oom_reason(RuntimeError("[kernel.cpp:launch@10] Assertion failure: arg count")) is None
    assert gpu_oom_reason(RuntimeError("CUDA Error CUDA_ERROR_ASSERT: device-side assert triggered")) is None
    assert gpu_oom_reason(ValueError("CUDA_ERROR_OUT_OF_MEMORY")) is None
    assert gpu_oom_reason(MemoryError()) is None


SETTINGS = ("--res", "24x16", "--spp", "4", "--pass-spp", "2", "--tile", "8", "--max-depth", "4")


def _render(tmp_path, name: str, *args: str, fault: str = "") -> tuple[dict, np.ndarray, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    out = tmp_path / f"{name}.exr"
    p = subprocess.run(
        [sys.executable, "-m", "meshrender", "render", "cornell", *SETTINGS, "--threads", "1", "-o", str(out),
         "--json", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout), read_exr(out), p.stderr


@pytest.fixture(scope="module")
def cpu_render(tmp_path_factory):
    """A plain CPU render (its record and image) of the settings every test here renders."""
    record, image, _ = _render(tmp_path_factory.mktemp("plain"), "cpu", "--backend", "cpu")
    assert record["backend_info"]["fell_back"] is False
    return record, image


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_a_render_out_of_gpu_memory_finishes_on_the_cpu_with_the_cpu_bits(tmp_path, cpu_render):
    plain, want = cpu_render
    for fault, call in (("gpu-oom", "cuMemAlloc_v2"), ("gpu-oom-launch", "cuLaunchKernel")):
        record, got, log = _render(tmp_path, fault, "--backend", "auto", fault=fault)
        info = record["backend_info"]
        assert record["backend"] == plain["backend"] and not info["is_gpu"]  # the same CPU arch
        assert info["fell_back"] is True and info["cause"] == "gpu-oom", info
        assert "GPU out of memory" in info["reason"] and call in info["reason"]
        assert "injected by MESHRENDER_FAULT" in info["reason"]  # an injected fault says it was one
        assert "GPU out of memory" in log  # the log says it too
        assert same_bits(got, want), fault
    # asked for the CPU, nothing falls back: the fault needs a backend that could be a GPU
    record, got, _ = _render(tmp_path, "cpu-fault", "--backend", "cpu", fault="gpu-oom")
    assert record["backend_info"]["fell_back"] is False and same_bits(got, want)


@pytest.mark.parametrize("fault", ["gpu-on-fire", "gpu-oom@0", "gpu-oom@x"])
def test_an_unknown_fault_is_named(tmp_path, fault):
    env = {**os.environ, FAULT_ENV: fault}
    p = subprocess.run(
        [sys.executable, "-m", "meshrender", "render", "cornell", "--res", "8x8", "--spp", "1", "-o",
         str(tmp_path / "x.png")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert p.returncode == 2 and f"MESHRENDER_FAULT={fault!r}" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_a_peer_out_of_gpu_memory_mid_job_tells_the_party_the_tui_shows_it(tmp_path, monkeypatch, cpu_render):
    """The render process warms its kernel on the built-in scene (upload 1), then a job's scene
    (upload 2) does not fit: it falls back during the job, the job completes with the CPU's bits."""
    from tui.app import MeshrenderApp, attach_or_start

    monkeypatch.setenv(FAULT_ENV, "gpu-oom@2")
    a = PeerProc(tmp_path / "a", "--threads", "1")
    monkeypatch.delenv(FAULT_ENV)
    b = None
    try:
        a.wait_for("renderer", timeout=300)
        assert not [e for e in a.events if e.get("fallback") == "gpu-oom"]  # not before the job
        to = ("--to", a.addr, "--party", PARTY, "--secret", SECRET)
        r = cli("submit", "cornell", "--json", *SETTINGS, *to, home=tmp_path / "client")
        assert r.returncode == 0, r.stderr[-2000:]
        job = json.loads(r.stdout)["id"]
        mine = a.wait_for("renderer", timeout=120, fallback="gpu-oom")  # its own JSON events
        assert mine["fell_back"] is True and not mine["gpu"] and "GPU out of memory" in mine["reason"]
        a.wait_for("job-done", job=job, timeout=120)
        # the frame is the CPU's, bit for bit
        out = tmp_path / "fetched"
        r = cli("results", job[:8], "-o", str(out), "--json", *to, home=tmp_path / "client")
        assert r.returncode == 0, r.stderr[-2000:]
        assert same_bits(read_exr(out / "frame_0000.exr"), cpu_render[1])
        # the party hears it in a's gossiped Status (b has no fault: nothing of the kind on b)
        b = PeerProc(tmp_path / "b", "--threads", "1", "--bootstrap", a.addr)
        st = b.wait_for("peer-status", timeout=60, peer=a.peer_id, fallback="gpu-oom")
        assert st["fell_back"] is True and st["gpu"] is False and st["backend"] == mine["backend"]
        assert "GPU out of memory" in st["reason"] and "CUDA_ERROR_OUT_OF_MEMORY" in st["reason"]
        assert not [e for e in b.events if e.get("event") == "renderer" and e.get("fallback") == "gpu-oom"]

        async def go():  # the TUI attached to a's status socket, as `meshrender tui` does
            app = MeshrenderApp(tmp_path / "a", attach_or_start(tmp_path / "a", None))
            async with app.run_test(size=(140, 30)) as pilot:
                table = app.query_one("#party-main")

                def row() -> list[str]:
                    cells = table.get_row_at(0) if table.row_count else []
                    return [c.plain if isinstance(c, Text) else str(c) for c in cells]

                for _ in range(150):
                    if row() and row()[1] == "CPU (GPU out of memory)":
                        break
                    await pilot.pause(0.2)
                assert row()[1] == "CPU (GPU out of memory)", row()
                assert "GPU out of memory" in row()[7]  # the why column
                assert "CPU (GPU out of memory)" in str(app.query_one("#summary").render())

        asyncio.run(go())
    finally:
        a.stop()
        if b is not None:
            b.stop()
