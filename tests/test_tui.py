"""The TUI: it attaches to a real local peer through its status socket, shows this peer in the
party table with its backend, submits a scene that completes, shows a running job's frame and
cancels it, keeps a departed member listed as lost, and runs in a real terminal (tmux) from
`meshrender tui`."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from party import PeerProc
from rich.text import Text

from tui.app import MeshrenderApp, attach_or_start
from tui.widgets import backend_text

CORNELL = REPO / "meshrender" / "data" / "cornell"


def small_scene(tmp_path: Path, name: str, res: int, spp: int, denoise: bool = False) -> Path:
    """The built-in Cornell box at another size, as a scene file of its own."""
    folder = tmp_path / name
    shutil.copytree(CORNELL, folder)
    toml = folder / "cornell.toml"
    text = toml.read_text().replace("resolution = [256, 256]", f"resolution = [{res}, {res}]")
    toml.write_text(text.replace("spp = 64", f"spp = {spp}" + ("\ndenoise = true" if denoise else "")))
    return toml


async def until(pilot, check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.2)


def cells(table) -> list[list[str]]:
    rows = (table.get_row_at(i) for i in range(table.row_count))
    return [[c.plain if isinstance(c, Text) else str(c) for c in row] for row in rows]


def test_backend_text_says_when_a_gpu_fell_back():
    assert backend_text({"gpu": True, "renders": True}).plain == "GPU"
    assert backend_text({"gpu": False, "fell_back": False, "renders": True}).plain == "CPU"
    fell = backend_text({"gpu": False, "fell_back": True, "reason": "out of memory", "renders": True})
    assert fell.plain == "CPU (fell back)" and "yellow" in str(fell.style)
    assert backend_text({"gpu": None, "renders": True}).plain == "starting"
    assert backend_text({"renders": False}).plain == "client"


def test_a_departed_member_stays_listed_as_lost(tmp_path):
    member = {"status": {"gpu": True, "state": "busy", "threads": 8, "renders": True, "units": 7}}
    items = [
        {"snapshot": {"peer_id": "me" * 20, "party": "p", "members": {"other" * 8: member}, "transfers": {}}},
        {"snapshot": {"peer_id": "me" * 20, "party": "p", "members": {}, "transfers": {}}},
    ]

    def attach(on_item, on_gone):
        for item in items:
            on_item(item)
        return lambda: None

    async def go():
        app = MeshrenderApp(tmp_path, attach)
        async with app.run_test(size=(100, 30)) as pilot:
            table = app.query_one("#party-main")
            await until(pilot, lambda: "other" * 8 in app.lost, 10, "the second snapshot")
            await pilot.pause(0.1)
            rows = cells(table)
            assert len(rows) == 2
            assert rows[1][0] == "  " + ("other" * 8)[-10:] and rows[1][1] == "GPU" and rows[1][6] == "lost"
            assert rows[1][5] == "7"

    asyncio.run(go())


def test_without_a_peer_the_app_says_so_and_stays_open(tmp_path):
    async def go():
        app = MeshrenderApp(tmp_path, attach_or_start(tmp_path, None))
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.gone_reason, 10, "the detach message")
            assert "cannot attach" in app.gone_reason
            await pilot.press("4")
            assert app.query_one("TabbedContent").active == "log"

    asyncio.run(go())


@pytest.mark.slow
def test_the_tui_attaches_to_a_real_peer_submits_watches_and_cancels(tmp_path):
    home = tmp_path / "home"
    peer = PeerProc(home, "--threads", "1")
    small = small_scene(tmp_path, "small", 32, 8, denoise=True)
    big = small_scene(tmp_path, "big", 128, 4096)
    try:

        async def go():
            app = MeshrenderApp(home, attach_or_start(home, None))
            async with app.run_test(size=(110, 30)) as pilot:
                party = app.query_one("#party-main")
                await until(pilot, lambda: app.snapshot.get("peer_id") == peer.peer_id, 30, "the snapshot")
                await until(pilot, lambda: party.row_count >= 1, 10, "the party table")
                me = cells(party)[0]
                assert me[0] == "▸ " + peer.peer_id[-10:]  # this peer, marked
                await until(pilot, lambda: cells(party)[0][1] in ("CPU", "CPU (fell back)", "GPU"), 60,
                            "the renderer's backend")  # fmt: skip
                # a long job: submitted, picked up, then cancelled from the queue tab
                await pilot.press("s")
                await pilot.press(*str(big), "enter")
                queue = app.query_one("#queue-main")
                await until(pilot, lambda: app.jobs and app.jobs[0].state == "running", 120, "the job to run")
                # its frame fills in: buckets owned by this peer, passes coming in
                def frame() -> dict:
                    return (app.snapshot.get("frames") or [{}])[0]

                await until(pilot, lambda: sum(frame().get("done", [])) > 0, 60, "a pass in the frame view")
                await until(pilot, lambda: cells(party)[0][6] == "rendering", 30, "this peer rendering")
                view = frame()
                assert view["job"] == app.jobs[0].id and view["peers"] == [peer.peer_id]
                await pilot.press("5")
                await pilot.pause(1.2)
                assert "frame 0" in app.query_one("#frame-main").render_line(0).text
                await pilot.press("2")
                await pilot.press("c")
                await until(pilot, lambda: app.jobs[0].state == "cancelled", 10, "the cancel")
                # a short one, watched to the end
                await pilot.press("s")
                await pilot.press(*str(small), "enter")
                await until(pilot, lambda: any(j.state == "done" for j in app.jobs), 120, "the small job")
                states = {row[7] for row in cells(queue)}
                assert states == {"done", "cancelled"}, states
                # the finished frame stays in view, as its denoised image
                done_job = next(j for j in app.jobs if j.state == "done")
                await until(pilot, lambda: frame().get("job") == done_job.id and frame().get("denoised"), 10,
                            "the denoised frame in view")  # fmt: skip
                await pilot.press("5")
                await pilot.pause(1.2)
                assert "done, denoised" in app.query_one("#frame-main").render_line(0).text
                log = "\n".join(app.log_lines)
                assert "job-started" in log and "job-done" in log and "submitted" in log

        asyncio.run(go())
    finally:
        peer.stop()


@pytest.mark.slow
def test_meshrender_tui_runs_in_a_terminal_and_quits(tmp_path):
    """A smoke test in a real terminal: `meshrender tui` starts its own peer, draws the party,
    and quits on q, leaving no socket behind."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    home = tmp_path / "home"
    session = f"meshrender-test-{os.getpid()}"
    cmd = f"cd {REPO} && {sys.executable} -m meshrender tui --home {home} --threads 1"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd], check=True)
    try:
        deadline = time.monotonic() + 90
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout  # fmt: skip
            if "party solo" in screen and ("CPU" in screen or "GPU" in screen):
                break
            time.sleep(0.5)
        assert "party solo" in screen and "Peer" in screen and "Backend" in screen, screen
        assert "Queue" in screen and "Frame" in screen
        assert "meshrender render" not in screen  # the render child's log lines go to tui.log
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            has = subprocess.run(["tmux", "has-session", "-t", session], capture_output=True)
            alive = has.returncode == 0
            if not alive:
                break
            time.sleep(0.3)
        assert not alive, "the app did not quit on q"
        assert not (home / "peer.sock").exists()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
